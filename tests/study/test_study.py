"""Studies on the embedded default: prior and baseline modes, pruning at equal compute, resume.

Failures, crashes, concurrent writers and bad arguments are tested in ``tests/reliability/``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from pathlib import Path
from typing import Any

import optuna
import pytest

import bstune
from bstune.errors import ConfigError
from bstune.study import ProbeSettings
from tests.study.study_runner import SPACE
from tests.study.test_function_study import SPACE as FUNCTION_SPACE
from tests.training.test_context import task

QUICK_PROBE = ProbeSettings(
    lr_steps=12, train_samples=1600, measure_samples=2000, throughput_steps=2, throughput_batches=(8, 64)
)


def _study(task: bstune.Task, **kw: Any) -> bstune.Study:
    args: dict[str, Any] = dict(n_trials=6, budget_samples=4000, seed=0, progress=False, probe=QUICK_PROBE, n_evals=4)
    return bstune.Study(task, kw.pop("space", SPACE), **(args | kw))


def test_prior_mode_draws_from_the_band_searches_the_space_and_records_derived_values(blob_task: bstune.Task) -> None:
    result = _study(blob_task, n_trials=8).run()
    prior, probe = result.prior, result.probe
    assert prior is not None and probe is not None
    assert probe.samples_used > 0 and probe.throughput
    assert prior.batch_range == (4, 128)  # the space's whole range
    for t in result.trials:
        assert set(t.params) >= {"batch_coord", "lr_coord"}
        rule = prior.lr_rule(t.batch_size)  # type: ignore[arg-type]
        drawn = prior.from_prior(t.number, 0) and not t.from_probe  # trial 0: the probe's run, somewhere in the search
        width = prior.lr_width if drawn else prior.lr_search_width
        assert rule / (1.0001 * width) <= t.lr <= rule * 1.0001 * width  # type: ignore[operator]
        if drawn:  # the first 3 and some after: inside the band
            assert prior.batch_low <= t.batch_size <= prior.batch_high  # type: ignore[operator]
        assert t.temperature == pytest.approx(t.lr / t.batch_size)  # type: ignore[operator]
    assert all(prior.from_prior(n, 0) for n in range(3)) and not all(prior.from_prior(n, 0) for n in range(8))
    assert result.samples_probe == probe.samples_used - result.trials[0].samples  # the probe's run is trial 0
    assert result.samples_total == result.samples_probe + sum(t.samples for t in result.trials) + result.samples_rescore
    assert result.samples_rescore == sum(r.samples for r in result.rescored) > 0
    assert result.best_config["batch_size"] in {t.batch_size for t in result.trials}
    assert result.to_dict()["best_config"] == result.best_config


def test_the_probe_trains_one_trial_at_the_study_budget_seed_and_milestones(blob_task: bstune.Task) -> None:
    """So that the study can count the probe's run as a trial (issue #18): it is kept in ``probe.run``."""
    result = _study(blob_task, n_trials=2, seed=5, rescore_top=0).run()
    probe = result.probe
    assert probe is not None and probe.run is not None
    run = probe.run
    assert run["config"]["max_samples"] == 4000 and run["config"]["seed"] == 5 and run["seed"] == 5
    assert [h["milestone"] for h in run["history"]] == [1000, 2000, 3000, 4000]  # the trials' milestones
    assert run["samples"] >= 4000 and run["status"] == "completed"
    assert probe.samples_used >= run["samples"]
    stored = result.to_dict()["probe"]["run"]
    assert stored["history"] == run["history"]


def test_the_probes_run_is_the_studys_first_trial_counted_once(blob_task: bstune.Task, tmp_path: Path) -> None:
    """It trained a config the search could draw, for a trial's budget: recorded as trial 0, it is one of
    ``n_trials``, the pruner compares later trials with it, and its samples are counted once."""
    journal = str(tmp_path / "study.log")
    space = SPACE | {"lr": {"min": 1e-3, "max": 300.0}}  # the range test blows up: the large-batch one runs too
    result = _study(blob_task, n_trials=3, rescore_top=0, storage=journal, space=space).run()
    probe, prior = result.probe, result.prior
    assert probe is not None and probe.run is not None and prior is not None
    first, *rest = result.trials
    assert first.from_probe and not any(t.from_probe for t in rest) and len(rest) == 2
    assert (first.status, first.batch_size, first.lr) == ("completed", probe.batch_size, pytest.approx(probe.lr_probe))
    assert first.samples == probe.run["samples"] and first.history == probe.run["history"]
    # it trained right after the first range test: the second (large-batch) one and the rest came after it
    assert probe.lr_ceiling < 300.0 and probe.large_batch > probe.batch_size
    assert probe.run["samples_before"] == len(probe.lr_range) * probe.batch_size
    best_val = min(h["val_loss"] for h in probe.run["history"])
    assert first.value == pytest.approx(best_val)
    assert result.samples_probe == probe.samples_used - first.samples
    assert result.samples_total == probe.samples_used + sum(t.samples for t in rest)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    (zero, *_) = optuna.load_study(study_name="bstune-blobs", storage=storage).get_trials()
    assert zero.intermediate_values == {1: pytest.approx(min(h["val_loss"] for h in probe.run["history"][:1])),
                                        2: pytest.approx(min(h["val_loss"] for h in probe.run["history"][:2])),
                                        3: pytest.approx(min(h["val_loss"] for h in probe.run["history"][:3])),
                                        4: pytest.approx(best_val)}  # fmt: skip
    # the sampler's distributions: TPE models trial 0 with the others (its intersection search space)
    assert zero.distributions == optuna.load_study(study_name="bstune-blobs", storage=storage).trials[1].distributions
    again = _study(blob_task, n_trials=4, rescore_top=0, storage=journal, space=space).run()  # resumed: once
    assert [t.from_probe for t in again.trials] == [True, False, False, False]


def test_the_probes_run_is_no_trial_where_the_space_searches_more_than_b_and_lr(blob_task: bstune.Task) -> None:
    space = SPACE | {"params": {"weight_decay": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}}}
    result = _study(blob_task, n_trials=2, rescore_top=0, space=space).run()
    assert result.probe is not None and result.probe.run is not None  # trained at the default weight decay
    assert not any(t.from_probe for t in result.trials) and len(result.trials) == 2
    assert result.samples_probe == result.probe.samples_used


class RecordingMedianPruner(optuna.pruners.MedianPruner):
    """The median pruner, noting each decision: (trial number, step, pruned)."""

    def __init__(self) -> None:
        super().__init__(n_startup_trials=2, n_warmup_steps=0)
        self.decisions: list[tuple[int, int, bool]] = []

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        pruned = super().prune(study, trial)
        assert trial.last_step is not None
        self.decisions.append((trial.number, trial.last_step, bool(pruned)))
        return pruned


def test_pruners_compare_trials_at_equal_sample_milestones(blob_task: bstune.Task) -> None:
    pruner = RecordingMedianPruner()
    res = _study(blob_task, mode="baseline", n_trials=8, pruner=pruner).run()
    study = res.optuna_study
    assert study is not None
    assert len({t.batch_size for t in res.trials}) > 1  # else equal steps would be equal samples anyway
    every = 4000 // 4
    at_step: dict[int, dict[int, float]] = {}  # step -> trial -> its best val_loss after step * every samples
    for frozen, record in zip(study.get_trials(), res.trials, strict=True):
        assert frozen.number == record.number
        best = math.inf
        for entry in record.history:  # evaluated at the shared milestones, within one batch of them
            assert entry["milestone"] % every == 0
            assert 0 <= entry["samples"] - entry["milestone"] < record.batch_size  # type: ignore[operator]
            best = min(best, entry["val_loss"])
            at_step.setdefault(entry["milestone"] // every, {})[record.number] = best
        # the step Optuna saw is the sample milestone, and its value the trial's best at that many samples
        assert frozen.intermediate_values == {
            step: v[record.number] for step, v in at_step.items() if record.number in v
        }
    assert {(n, step) for n, step, _ in pruner.decisions} == {(n, step) for step, v in at_step.items() for n in v}
    for number, step, pruned in pruner.decisions:  # each decision: this trial against the finished ones, same samples
        finished = [v for n, v in at_step[step].items() if n < number and res.trials[n].status == "completed"]
        n_finished = sum(t.status == "completed" for t in res.trials[:number])
        assert pruned == (n_finished >= 2 and bool(finished) and at_step[step][number] > statistics.median(finished))
        if pruned and step < 4:  # at the last milestone the trial has spent its budget and completes
            assert res.trials[number].status == "pruned"
            assert res.trials[number].history[-1]["milestone"] == step * every  # stopped right there
    assert any(pruned and step < 4 for _, step, pruned in pruner.decisions)  # the comparison did stop a trial


class PruneEveryTrialAtTheEnd(optuna.pruners.BasePruner):
    """Prunes any trial at its last step (4 of 4): what Hyperband's top rung may do to a finished trial."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.last_step is not None and trial.last_step >= 4


def test_a_trial_that_spent_its_budget_completes_whatever_the_pruner_says(blob_task: bstune.Task) -> None:
    # Hyperband's rung at n_evals used to prune trials that had trained for their whole budget:
    # 1-4 of every 24 on the digits benchmark, full-budget results thrown out of the recommendation
    res = _study(blob_task, mode="baseline", n_trials=3, pruner=PruneEveryTrialAtTheEnd(), rescore_top=0).run()
    assert [t.status for t in res.trials] == ["completed"] * 3
    assert all(t.samples >= 4000 and t.value is not None for t in res.trials)


def test_journal_storage_and_settings_must_match_to_resume(blob_task: bstune.Task, tmp_path: Path) -> None:
    journal = str(tmp_path / "study.log")
    first = _study(blob_task, mode="baseline", n_trials=2, storage=journal).run()
    again = _study(blob_task, mode="baseline", n_trials=3, storage=journal).run()
    assert [t.number for t in again.trials] == [0, 1, 2]
    assert [t.value for t in again.trials[:2]] == [t.value for t in first.trials]  # kept, not re-run
    with pytest.raises(
        ConfigError, match=r"different settings: budget_samples: the stored study used 4000, this run asks 8000"
    ):
        _study(blob_task, mode="baseline", n_trials=3, storage=journal, budget_samples=8000).run()


def test_a_resume_with_another_pruner_is_refused_and_one_stored_without_a_pruner_resumes(
    blob_task: bstune.Task, tmp_path: Path
) -> None:
    """A newcomer resumed a study run with pruner 'none' under the default hyperband: accepted, and its report
    said "Pruner: hyperband" of 12 trials, 10 of them run unpruned."""
    journal = str(tmp_path / "study.log")
    _study(blob_task, mode="baseline", n_trials=1, storage=journal, pruner="none", rescore_top=0).run()
    with pytest.raises(
        ConfigError, match=r"different settings: pruner: the stored study used \"none\", this run asks \"hyperband\";"
    ):
        _study(blob_task, mode="baseline", n_trials=2, storage=journal, rescore_top=0).run()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    study = optuna.load_study(study_name="bstune-blobs", storage=storage)
    settings = study.user_attrs["bstune_settings"]
    del settings["pruner"]  # as a bstune that did not store it wrote the settings
    study.set_user_attr("bstune_settings", settings)
    again = _study(blob_task, mode="baseline", n_trials=2, storage=journal, rescore_top=0).run()
    assert [t.number for t in again.trials] == [0, 1]


def test_a_study_stored_before_lr_anchor_resumes_only_with_the_anchor_it_ran_with(
    blob_task: bstune.Task, tmp_path: Path
) -> None:
    journal = str(tmp_path / "study.log")
    _study(blob_task, mode="baseline", n_trials=1, storage=journal).run()
    # make the stored settings look like an older bstune's: no prior.lr_anchor (it anchored at half)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    study = optuna.load_study(study_name="bstune-blobs", storage=storage)
    settings = study.user_attrs["bstune_settings"]
    del settings["space"]["prior"]["lr_anchor"]
    study.set_user_attr("bstune_settings", settings)
    with pytest.raises(
        ConfigError, match=r"different settings: space.prior.lr_anchor: the stored study used 0.5, this run asks 0.25;"
    ):
        _study(blob_task, mode="baseline", n_trials=2, storage=journal).run()  # today's default, 0.25
    old_space = SPACE | {"prior": {**SPACE.get("prior", {}), "lr_anchor": 0.5}}
    again = _study(blob_task, mode="baseline", n_trials=2, storage=journal, space=old_space).run()
    assert [t.number for t in again.trials] == [0, 1]


def test_a_resume_that_changes_an_optimizer_setting_from_its_default_names_the_default(
    blob_task: bstune.Task, tmp_path: Path
) -> None:
    """A newcomer's space set betas [0.9, 0.999] (the default) and a resume asked [0.9, 0.99]: the refusal said
    "the stored study used nothing (not set)", as if the study had run without betas."""
    journal = str(tmp_path / "study.log")
    adam = SPACE | {"optimizer": {"family": "adam", "betas": [0.9, 0.999]}}
    _study(blob_task, mode="baseline", n_trials=1, storage=journal, space=adam).run()
    other = SPACE | {"optimizer": {"family": "adam", "betas": [0.9, 0.99]}}
    with pytest.raises(
        ConfigError,
        match=re.escape("space.optimizer.betas: the stored study used the default, [0.9, 0.999], this run asks [0.9, "),
    ):
        _study(blob_task, mode="baseline", n_trials=2, storage=journal, space=other).run()


def test_a_study_stored_before_batch_top_resumes_with_todays_defaults(blob_task: bstune.Task, tmp_path: Path) -> None:
    """Before ``prior.batch_top`` the band's top was B_noise, today's default: such a study resumes as it is."""
    journal = str(tmp_path / "study.log")
    _study(blob_task, mode="prior", n_trials=1, storage=journal, rescore_top=0).run()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    study = optuna.load_study(study_name="bstune-blobs", storage=storage)
    settings = study.user_attrs["bstune_settings"]
    del settings["space"]["prior"]["batch_top"]
    study.set_user_attr("bstune_settings", settings)
    again = _study(blob_task, mode="prior", n_trials=2, storage=journal, rescore_top=0).run()
    assert [t.number for t in again.trials] == [0, 1]
    low = SPACE | {"prior": {**SPACE.get("prior", {}), "batch_top": 0.25}}
    with pytest.raises(ConfigError, match=r"space.prior.batch_top: the stored study used 1.0, this run asks 0.25"):
        _study(blob_task, mode="prior", n_trials=3, storage=journal, rescore_top=0, space=low).run()


def test_a_prior_study_stored_before_the_soft_prior_does_not_resume_a_baseline_one_does(
    blob_task: bstune.Task, tmp_path: Path
) -> None:
    """Its trials' coordinates meant positions in the band alone: read today, they would mislead TPE."""
    for mode in ("prior", "baseline"):
        journal = str(tmp_path / f"{mode}.log")
        _study(blob_task, mode=mode, n_trials=1, storage=journal, rescore_top=0).run()
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
        study = optuna.load_study(study_name="bstune-blobs", storage=storage)
        settings = study.user_attrs["bstune_settings"]
        del settings["space"]["prior"]["weight"], settings["space"]["prior"]["lr_search_width"]
        study.set_user_attr("bstune_settings", settings)
        if mode == "prior":
            with pytest.raises(
                ConfigError,
                match=r'settings: space.prior.weight: the stored study used "none: the search stayed in the band',
            ):
                _study(blob_task, mode=mode, n_trials=2, storage=journal, rescore_top=0).run()
        else:
            again = _study(blob_task, mode=mode, n_trials=2, storage=journal, rescore_top=0).run()
            assert [t.number for t in again.trials] == [0, 1]


def test_a_resume_asking_for_fewer_trials_says_it_keeps_them_all(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A newcomer resumed a 4-trial study with n_trials=2: it silently kept (and reported) all 4."""
    args: dict[str, Any] = dict(
        budget_samples=2048, mode="baseline", progress=False, rescore_top=0, storage=f"sqlite:///{tmp_path}/s.db"
    )
    bstune.Study(task(), FUNCTION_SPACE, study_name="fewer", n_trials=4, **args).run()
    with caplog.at_level("WARNING", logger="bstune.study._optuna_backend"):
        again = bstune.Study(task(), FUNCTION_SPACE, study_name="fewer", n_trials=2, **args).run()
    assert len(again.trials) == 4
    assert any("already holds 4 finished trials, more than n_trials=2" in r.getMessage() for r in caplog.records)


def test_a_resumed_study_draws_new_configs_not_the_first_runs_again(tmp_path: Path) -> None:
    """The default sampler seeded as in the first run replayed its random draws: trial 2 was trial 0 again."""
    args: dict[str, Any] = dict(
        budget_samples=2048, mode="baseline", progress=False, rescore_top=0, storage=f"sqlite:///{tmp_path}/s.db"
    )
    first = bstune.Study(task(), FUNCTION_SPACE, study_name="replay", n_trials=2, **args).run()
    again = bstune.Study(task(), FUNCTION_SPACE, study_name="replay", n_trials=4, **args).run()
    configs = [(t.batch_size, t.lr) for t in again.trials]
    assert configs[:2] == [(t.batch_size, t.lr) for t in first.trials]
    assert len(set(configs)) == 4, configs
    twin = tmp_path / "twin.db"  # and still deterministic: the same storage and seed draw the same trials
    args["storage"] = f"sqlite:///{twin}"
    bstune.Study(task(), FUNCTION_SPACE, study_name="replay", n_trials=2, **args).run()
    same = bstune.Study(task(), FUNCTION_SPACE, study_name="replay", n_trials=4, **args).run()
    assert [(t.batch_size, t.lr) for t in same.trials] == configs


def test_a_space_that_names_no_optimizer_trains_the_tasks_own(caplog: pytest.LogCaptureFixture) -> None:
    """A newcomer's Task declared Adam and their space had no optimizer section: every trial trained plain SGD
    (the space's default) without a word. A space that names one still replaces the Task's, and says so."""
    adam = dataclasses.replace(task(), optimizer=bstune.OptimizerSpec("adam", weight_decay=0.01), validate=False)
    args: dict[str, Any] = dict(n_trials=2, budget_samples=2048, mode="baseline", progress=False, rescore_top=0)
    result = bstune.Study(adam, FUNCTION_SPACE, **args).run()
    assert result.optimizer == "adam" and result.best_config["optimizer"] == "adam"
    assert result.best_config["weight_decay"] == 0.01
    named = FUNCTION_SPACE | {"optimizer": {"family": "sgd", "momentum": 0.9}}
    with caplog.at_level("WARNING", logger="bstune.study._study"):
        sgd = bstune.Study(adam, named, **args).run()
    assert sgd.optimizer == "sgd" and sgd.best_config["momentum"] == 0.9
    assert any("replaces the task's" in r.getMessage() and "adam" in r.getMessage() for r in caplog.records)


def test_a_budget_smaller_than_its_evaluations_blames_the_budget() -> None:
    """A newcomer's --budget-samples 3 was told 'n_evals: must be an integer in [1, budget_samples], got 9'."""
    with pytest.raises(ConfigError, match=r"budget_samples: 3 samples cannot hold 9 evaluations \(n_evals\)"):
        bstune.Study(task(), FUNCTION_SPACE, budget_samples=3, n_evals=9, progress=False)
    with pytest.raises(ConfigError, match=r"n_evals: must be an integer >= 1, got 0"):
        bstune.Study(task(), FUNCTION_SPACE, budget_samples=3000, n_evals=0, progress=False)


def test_a_space_naming_no_optimizer_keeps_saying_so_through_copies_and_names_the_task_it_trains() -> None:
    """The review found the 'names no optimizer' mark lost on a copy (then a Task's Adam trained as SGD again),
    and a searched momentum refused as if the space had named Adam."""
    import copy
    import pickle

    from bstune.space import SearchSpace

    space = SearchSpace.coerce({"name": "s"})
    for copied in (dataclasses.replace(space, batch_min=4), copy.deepcopy(space), pickle.loads(pickle.dumps(space))):
        assert copied.optimizer_named is False
    assert SearchSpace.coerce({"name": "s", "optimizer": {"family": "sgd"}}).optimizer_named is True
    adam = dataclasses.replace(task(), optimizer=bstune.OptimizerSpec("adam"), validate=False)
    momentum = FUNCTION_SPACE | {"params": {"momentum": {"type": "float", "low": 0.5, "high": 0.9}}}
    with pytest.raises(ConfigError, match=r"params\.momentum: .*the space names no optimizer, so the task's \(adam\)"):
        bstune.Study(adam, momentum, budget_samples=2048, mode="baseline", progress=False)
