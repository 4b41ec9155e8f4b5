"""``bstune train --config``: the check that the config comes from a study of this script's training set
(the command end to end: tests/cli/test_train_config.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from bstune._train_command import _check_same_training_set

TASK = SimpleNamespace(n_train=160)  # all the check reads of a task
REC = {"batch_size": 16, "lr": 0.05}


OTHER = "comes from a study whose training set had 1,437 examples; this script's task has 160"


@pytest.mark.parametrize(
    ("data", "questioned"),
    [
        ({"recommended": REC, "study": {"n_train": 1_437}}, True),  # report.json
        ({"best_config": REC, "probe": {"n_train": 1_437}}, True),  # result.json of a study with a probe
        (
            {"best_config": REC, "probe": None, "trials": [{"n_train": 1_000}, {"n_train": 1_437}, {}]},
            True,
        ),  # a function's
        ({"recommended": REC, "study": {"n_train": 160}}, False),
        ({"best_config": REC, "probe": {"n_train": 160}}, False),
        ({"best_config": REC, "probe": None, "trials": []}, False),  # a baseline study of a Task records no size
        ({"recommended": REC, "study": {}}, False),
    ],
)
def test_a_config_from_a_study_of_another_training_set_is_questioned(
    data: dict[str, object], questioned: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.json"
    with caplog.at_level(logging.WARNING, logger="bstune.cli"):
        _check_same_training_set(TASK, data, str(path))
    assert (f"{path} {OTHER}" in caplog.text) is questioned and (caplog.text == "") is not questioned
