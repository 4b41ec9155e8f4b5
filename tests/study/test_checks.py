"""What a study refuses (or warns about) when it is built, before the probe or any trial runs."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
import torch

import bstune
from bstune.errors import ConfigError
from bstune.study import _study as study_module
from bstune.study._checks import min_budget
from bstune.training import TrainConfig
from bstune.training._loop import _milestones
from tests.conftest import small_mlp
from tests.study.study_runner import SPACE


def _study(task: bstune.Task, **kw: Any) -> bstune.Study:
    args: dict[str, Any] = dict(n_trials=4, budget_samples=4000, progress=False, n_evals=9)
    return bstune.Study(task, kw.pop("space", SPACE), **(args | kw))


def test_a_budget_too_small_for_the_milestones_is_refused_with_the_numbers(blob_task: bstune.Task) -> None:
    with pytest.raises(ConfigError) as info:
        _study(blob_task, budget_samples=100)  # the space's largest batch: 128
    assert (info.value.source, info.value.field) == ("Study", "budget_samples")
    message = str(info.value)
    assert "100 samples" in message and "batch size (128) 1 optimizer step(s) for its 9 milestones" in message
    assert "at least 1,025" in message
    with pytest.raises(ConfigError, match="at least 1,025"):
        _study(blob_task, budget_samples=1024)
    _study(blob_task, budget_samples=1025)
    _study(blob_task, budget_samples=1024, n_evals=8)  # fewer milestones need fewer steps
    assert "training function" not in message  # a task's training set caps the batch size already


def test_a_training_functions_budget_refusal_says_its_data_size_is_not_known_yet() -> None:
    """A newcomer's 400-example loop with batch_size.max 4096 was asked for 32,769 samples, where 3,601 serve
    once the batch size is cut to the training set: the message now says the function's size is not known."""

    def train(ctx: bstune.TrialContext) -> None:
        raise AssertionError("not run: the budget is refused first")

    with pytest.raises(ConfigError, match=r"is not known before it runs, so a batch_size\.max above its size counts"):
        _study(train, budget_samples=100)  # type: ignore[arg-type]


@pytest.mark.parametrize("n_evals", [1, 2, 4, 9, 12])
@pytest.mark.parametrize("batch", [1, 7, 64, 100])
def test_from_the_minimum_budget_up_each_milestone_falls_on_a_step_of_its_own(n_evals: int, batch: int) -> None:
    def steps_at_milestones(budget: int) -> list[int]:
        config = TrainConfig(batch_size=batch, lr=0.1, max_samples=budget, eval_every_samples=-(-budget // n_evals))
        return [-(-m // batch) for m in _milestones(config)]  # the step at which each milestone is reached

    need = min_budget(n_evals, batch)
    for budget in (need, need + 1, need + batch // 2, 3 * need, 10 * need + 7):
        steps = steps_at_milestones(budget)
        assert len(set(steps)) == len(steps), (budget, steps)
        assert -(-budget // batch) >= n_evals  # a full trial takes at least one step per milestone
    assert -(-(need - 1) // batch) == n_evals - 1  # one sample less: fewer steps than milestones


def test_a_probe_dearer_than_all_the_trials_is_warned_about_before_it_runs(
    blob_task: bstune.Task, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class ProbeStarted(Exception):
        """The probe was called; ``warned``: with the warning already given."""

        def __init__(self, warned: bool) -> None:
            self.warned = warned

    def probe(*args: Any, **kwargs: Any) -> None:
        raise ProbeStarted(any("the probe will train on at least" in r.getMessage() for r in caplog.records))

    monkeypatch.setattr(study_module, "probe_space", probe)
    caplog.set_level(logging.WARNING, logger="bstune")
    # a space that searches more than B and lr: the probe's run stays the probe's (it is no trial)
    space = SPACE | {"params": {"weight_decay": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}}}
    with pytest.raises(ProbeStarted) as started:
        _study(blob_task, n_trials=1, budget_samples=1100, space=space).run()  # a trial: 1,100; the probe: >= 1,848
    assert started.value.warned
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        "at least 1,848 samples, 1.7x" in warning  # its trial-long run (1,100) and its ladder (a quarter, at least)
        and "1 trials x budget_samples 1,100 = 1,100" in warning
        and "baseline" in warning
    )
    caplog.clear()
    with pytest.raises(ProbeStarted) as started:
        _study(blob_task, n_trials=40, budget_samples=10_000).run()
    assert not started.value.warned
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_a_model_param_the_factory_does_not_take_is_refused_at_once(blob_task: bstune.Task) -> None:
    space = dict(SPACE, params={"model.width": {"type": "int", "low": 8, "high": 64}})
    with pytest.raises(ConfigError) as info:
        _study(blob_task, space=space)  # small_mlp(d, hidden, classes): no `width`
    assert (info.value.source, info.value.field) == ("<dict>", "params.model.width")
    message = str(info.value)
    assert "small_mlp(d: 'int' = 8, hidden: 'int' = 16, classes: 'int' = 3)" in message
    assert "add a `width` keyword to the factory or remove the param from the space" in message
    lambda_task = dataclasses.replace(blob_task, model=lambda: small_mlp(), validate=False)
    with pytest.raises(ConfigError, match=r"<lambda>\(\) \(test_checks.py:\d+\) takes no keyword `width`"):
        _study(lambda_task, space=space)


def test_model_params_the_factory_takes_pass(blob_task: bstune.Task) -> None:
    hidden = dict(SPACE, params={"model.hidden": {"type": "int", "low": 8, "high": 64}})
    _study(blob_task, space=hidden)

    def anything(**kwargs: Any) -> torch.nn.Module:
        return small_mlp()

    _study(dataclasses.replace(blob_task, model=anything, validate=False), space=hidden)
