"""``critical_batch="measure"``: the direct measurement as a phase of a study, kept in its store, led with in the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import bstune
from bstune.errors import ConfigError
from bstune.study import ProbeSettings, StudySettings
from tests.study.study_runner import SPACE

QUICK_PROBE = ProbeSettings(
    lr_steps=12, train_samples=1600, measure_samples=2000, throughput_steps=2, throughput_batches=(8, 64)
)


def _study(task: bstune.Task, storage: str, **kw: Any) -> bstune.Study:
    args: dict[str, Any] = dict(
        n_trials=3,
        budget_samples=2400,
        seed=0,
        progress=False,
        probe=QUICK_PROBE,
        n_evals=3,
        rescore_top=0,
        critical_batch="measure",
        storage=storage,
    )
    return bstune.Study(task, SPACE, **(args | kw))


@pytest.mark.slow  # about 50 trials' samples of branches
def test_a_measuring_study_measures_from_its_best_trial_keeps_it_and_the_report_leads_with_it(
    blob_task: bstune.Task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = str(tmp_path / "study.log")
    result = _study(blob_task, journal).run()
    measured = result.critical_measured
    assert measured is not None and measured["trial"] == result.best_trial
    best = next(t for t in result.trials if t.number == result.best_trial)
    ref = measured["reference"]
    assert (ref["batch_size"], ref["lr"], ref["budget_samples"]) == (best.batch_size, best.lr, 2400)
    assert len(measured["segments"]) == 3 and measured["cost_samples"] > 2400
    assert all(4 <= b <= 128 for b in measured["ladder"])  # the space's batch range
    # the search's sample count is the search's: the measurement is counted apart
    assert result.samples_total == result.samples_probe + sum(t.samples for t in result.trials)

    report = result.report()
    cb = report.data["critical_batch"]
    assert cb["measured"]["trial"] == result.best_trial
    assert cb["headline"]["source"] == "measured" if measured["whole"] else "fitted"
    md = report.to_markdown()
    section = md[md.index("## Critical batch size") :]
    assert section.index("**Measured directly**") < section.index("Fitted to the study's own trials")
    assert "B_crit over training" in section
    # result.json carries it, and a report rebuilt from the file says the same
    result.save(tmp_path / "out")
    again = bstune.StudyResult.load(tmp_path / "out")
    assert again.critical_measured == result.to_dict()["critical_measured"]

    # resumed: the store kept it, nothing is measured again
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("measured again")

    monkeypatch.setattr("bstune.study._critical.measure_critical_batch", refuse)
    resumed = _study(blob_task, journal).run()
    assert resumed.critical_measured == measured


def test_without_the_measurement_the_report_says_what_the_fit_rests_on_and_how_to_measure(
    blob_task: bstune.Task, tmp_path: Path
) -> None:
    result = _study(blob_task, str(tmp_path / "s.log"), critical_batch="fit").run()
    assert result.critical_measured is None
    report = result.report()
    assert report.data["critical_batch"]["headline"]["source"] in ("fitted", "none")
    section = report.to_markdown().split("## Critical batch size")[1]
    assert "**Measured directly**" not in section
    assert 'critical_batch="measure"' in section or "no fit" in section


def test_a_training_function_cannot_measure_and_a_bad_value_names_the_field() -> None:
    def train(ctx: Any) -> None:
        pass

    with pytest.raises(ConfigError) as info:
        bstune.Study(train, SPACE | {"batch_size": {"min": 4, "max": 64}}, critical_batch="measure")
    assert info.value.field == "critical_batch" and "bstune.Task" in str(info.value)
    with pytest.raises(ConfigError) as info:
        StudySettings(critical_batch="direct")  # type: ignore[arg-type]
    assert info.value.field == "critical_batch"
