"""A target on an accuracy is reached from below: the metric's direction, in the report and the CLI alike.

Fast tests on synthetic results first; then a real tiny study, read through the
``bstune`` entry point in a subprocess and through the Python API, and an older
result.json (examples/digits_report, written before directions were stored).
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import bstune
from bstune._loading import load_task
from bstune.analysis import steps_to_target
from bstune.errors import ConfigError
from bstune.report import Report, build_report
from bstune.study import StudyResult, TrialRecord
from tests.cli.cli_runner import ForkedCli

ROOT = Path(__file__).resolve().parents[2]
OLD_RESULT = ROOT / "examples" / "digits_report" / "result.json"  # a real study's result, read as an older one


def _trial(number: int, batch: int, accuracies: list[float], every: int = 1000) -> TrialRecord:
    history = [
        {"samples": (k + 1) * every, "step": (k + 1) * every // batch, "lr": 0.1, "train_loss": 1 - a,
         "val_loss": 1.1 - a, "gap": 0.1, "train_accuracy": a + 0.01, "val_accuracy": a, "val_score": a}
        for k, a in enumerate(accuracies)
    ]  # fmt: skip
    return TrialRecord(
        number=number, status="completed", batch_size=batch, lr=0.1, temperature=0.1 / batch,
        value=min(h["val_loss"] for h in history), samples=every * len(accuracies), params={}, config={},
        history=history,
    )  # fmt: skip


CURVES = {  # batch size -> val_accuracy at each evaluation: four pass 0.85 (later the larger the batch), one never
    8: [0.50, 0.80, 0.90, 0.95],
    16: [0.45, 0.70, 0.87, 0.93],
    32: [0.40, 0.60, 0.80, 0.90],
    64: [0.35, 0.50, 0.70, 0.86],
    128: [0.30, 0.40, 0.55, 0.70],
}


def _result(directions: dict[str, str] | None = None) -> StudyResult:
    trials = [_trial(i, b, acc) for i, (b, acc) in enumerate(CURVES.items())]
    config = {"batch_size": 8, "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "warmup_samples": 0,
              "schedule": "constant", "temperature": 0.0125}  # fmt: skip
    return StudyResult(
        study_name="acc", mode="baseline", objective="val_loss", direction="minimize", best_config=config,
        best_value=float(trials[0].value or 0), trials=trials, probe=None, prior=None, budget_samples=4000,
        samples_probe=0, directions=directions if directions is not None else {},
    )  # fmt: skip


DECLARED = {"train_loss": "minimize", "val_loss": "minimize", "train_accuracy": "maximize", "val_accuracy": "maximize",
            "val_score": "maximize"}  # fmt: skip


def _check_points(critical: dict[str, Any], trials: list[Any], metric: str, target: float) -> None:
    """Each point says reached exactly when a trial at its batch size passed ``target`` upwards, at those steps."""
    by_batch: dict[int, list[Any]] = defaultdict(list)
    for t in trials:
        t = t if isinstance(t, dict) else t.to_dict()
        if t["batch_size"] and t["history"]:
            by_batch[int(t["batch_size"])].append(t)
    assert critical["target"] == pytest.approx(target) and critical["direction"] == "maximize"
    assert critical["points"], critical
    for p in critical["points"]:
        hits = [steps_to_target(t["history"], p["batch_size"], target, metric, direction="maximize")
                for t in by_batch[p["batch_size"]]]  # fmt: skip
        reached = [h.steps for h in hits if h.reached]
        assert p["reached"] == bool(reached), (p, target)
        if reached:
            assert p["steps"] == pytest.approx(min(reached))
    assert sum(p["reached"] for p in critical["points"]) >= 3


def _default_target(trials: list[Any], metric: str) -> float:
    """The m-th highest of the batch sizes' best values, m = max(⌈2k/3⌉, 3): reached by two thirds of them."""
    best: dict[int, float] = {}
    for t in trials:
        t = t if isinstance(t, dict) else t.to_dict()
        values = [h[metric] for h in t["history"] if h.get(metric) is not None]
        if t["batch_size"] and values:
            best[t["batch_size"]] = max(best.get(t["batch_size"], -math.inf), *values)
    ranked = sorted(best.values(), reverse=True)
    return ranked[max(math.ceil(2 * len(ranked) / 3 - 1e-9), min(3, len(ranked))) - 1]


@pytest.mark.parametrize("directions", [DECLARED, {}], ids=["stored", "older result"])
def test_an_accuracy_target_is_reached_from_below(directions: dict[str, str]) -> None:
    result = _result(directions)
    report = build_report(result, {"metric": "val_accuracy", "value": 0.85})
    cb = report.data["critical_batch"]
    _check_points(cb, result.trials, "val_accuracy", 0.85)
    assert {p["batch_size"]: p["reached"] for p in cb["points"]} == {8: True, 16: True, 32: True, 64: True, 128: False}
    assert "val_accuracy ≥ 0.85" in report.to_markdown()
    assert report.data["study"]["directions"]["val_accuracy"] == "maximize"
    default = build_report(result, {"metric": "val_accuracy"}).data["critical_batch"]["target"]
    assert default == _default_target(result.trials, "val_accuracy") == 0.86  # high: not the worst accuracy (0.45)


def test_a_loss_target_is_still_reached_from_above() -> None:
    cb = build_report(_result(DECLARED), {"metric": "val_loss", "value": 0.3}).data["critical_batch"]
    assert cb["direction"] == "minimize"  # val_loss = 1.1 - accuracy: at or below 0.3 once accuracy passes 0.8
    assert {p["batch_size"]: p["reached"] for p in cb["points"]} == {8: True, 16: True, 32: True, 64: True, 128: False}


def test_a_declared_direction_wins_over_the_name_and_an_older_result_needs_one() -> None:
    cb = build_report(_result(DECLARED), {"metric": "val_score", "value": 0.85}).data["critical_batch"]
    assert cb["direction"] == "maximize" and [p["reached"] for p in cb["points"]] == [True] * 4 + [False]
    with pytest.raises(ConfigError, match=r"does not say whether 'val_score' is minimized or maximized.*direction"):
        build_report(_result({}), {"metric": "val_score", "value": 0.85})  # older result, and the name does not tell
    old = _result({})
    old.objective, old.direction = "val_score", "maximize"  # ... unless it was the study's objective
    assert old.direction_of("val_score") is bstune.Direction.MAXIMIZE


def test_a_target_gives_the_direction_a_result_does_not_say_and_may_not_contradict_one_it_does() -> None:
    """A newcomer's training function reported val_r2 beside its objective val_loss: the result knew no direction
    for val_r2, and the only way to use it as a target was to edit result.json by hand."""
    told = build_report(_result({}), {"metric": "val_score", "value": 0.85, "direction": "maximize"}).data
    cb = told["critical_batch"]
    assert cb["direction"] == "maximize" and [p["reached"] for p in cb["points"]] == [True] * 4 + [False]
    with pytest.raises(ConfigError, match=r"'val_score' is maximized in this study.*the target says minimize"):
        build_report(_result(DECLARED), {"metric": "val_score", "value": 0.85, "direction": "minimize"})
    with pytest.raises(ConfigError, match=r"target.direction: must be 'minimize' or 'maximize', got 'up'"):
        build_report(_result({}), {"metric": "val_score", "value": 0.85, "direction": "up"})
    with pytest.raises(ConfigError, match=r"no metric 'val_nothing'"):
        build_report(_result({}), {"metric": "val_nothing", "value": 0.85, "direction": "maximize"})


def _trials_table_values(result: StudyResult) -> list[float]:
    lines = build_report(result).to_markdown().splitlines()
    rows = [r for r in lines[lines.index("## Trials") :] if r.startswith("| ") and r.split("|")[1].strip().isdigit()]
    return [float(r.split("|")[6]) for r in rows[: len(result.trials)]]


def test_the_trials_table_lists_the_best_first_when_the_objective_is_maximized() -> None:
    result = _result(DECLARED)
    by_accuracy = [dataclasses.replace(t, value=max(h["val_accuracy"] for h in t.history)) for t in result.trials]
    maximized = dataclasses.replace(result, objective="val_accuracy", direction="maximize", trials=by_accuracy)
    values = _trials_table_values(maximized)
    assert values == sorted(values, reverse=True) and values[0] == 0.95, values
    values = _trials_table_values(result)  # a loss: the lowest first
    assert values == sorted(values) and len(values) == 5, values


def test_an_unknown_metric_is_an_error_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        build_report(_result(DECLARED), {"metric": "val_acc"})
    assert (info.value.source, info.value.field) == ("report", "target.metric")
    assert "no metric 'val_acc'" in str(info.value)
    assert "known metrics: train_accuracy, train_loss, val_accuracy, val_loss, val_score" in str(info.value)


def test_directions_survive_result_json(tmp_path: Path) -> None:
    _result(DECLARED).save(tmp_path)
    assert json.loads((tmp_path / "result.json").read_text())["directions"] == DECLARED
    assert StudyResult.load(tmp_path).directions == DECLARED


def test_a_failed_save_leaves_the_previous_report_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("report.json", "report.md", "report.html"):
        (tmp_path / name).write_text(f"the good {name}\n")

    def broken(self: Report) -> str:
        raise RuntimeError("the figures failed")

    monkeypatch.setattr(Report, "to_html", broken)
    with pytest.raises(RuntimeError):
        build_report(_result(DECLARED), {"metric": "val_accuracy", "value": 0.85}).save(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json", "report.md"]
    for name in ("report.json", "report.md", "report.html"):
        assert (tmp_path / name).read_text() == f"the good {name}\n"


# -- a real tiny study --------------------------------------------------------------------------

TASK = """
import torch

import bstune


def accuracy(out, y):
    return (out.argmax(-1) == y).float().mean()


def make_task():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=gen) * 0.7
    y = torch.randint(0, 3, (520,), generator=gen)
    x = centers[y] + torch.randn(520, 8, generator=gen)
    return bstune.Task(
        model=lambda: torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)),
        train_data=(x[:400], y[:400]),
        val_data=(x[400:], y[400:]),
        loss=torch.nn.CrossEntropyLoss(),
        metrics={"accuracy": bstune.Metric(accuracy, direction="maximize")},
        name="blobs",
    )
"""
SPACE = "name: blobs\nbatch_size: {min: 4, max: 128}\nlr: {min: 0.01, max: 1.0}\n"
TARGET = 0.7  # the blobs overlap: accuracy climbs from ~0.4 to ~0.78 over the budget, so most trials pass 0.7 late


def _bstune(cli: ForkedCli, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return cli.completed(list(args), cwd)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory, forked_cli: ForkedCli) -> Path:
    """``bstune run`` of a 5-trial baseline study of the blobs, every trial to the end of its budget."""
    folder = tmp_path_factory.mktemp("accuracy")
    (folder / "task.py").write_text(TASK)
    (folder / "space.yaml").write_text(SPACE)
    proc = _bstune(
        forked_cli, "run", "task.py", "--space", "space.yaml", "--trials", "5", "--budget-samples", "2000", "--mode", "baseline",
        "--pruner", "none", "--rescore-top", "0", "--out", "study", "--no-progress", cwd=folder,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return folder / "study"


@pytest.mark.slow
def test_cli_reads_an_accuracy_target_of_a_real_study(study_dir: Path, tmp_path: Path, forked_cli: ForkedCli) -> None:
    result = json.loads((study_dir / "result.json").read_text())
    assert result["directions"]["val_accuracy"] == "maximize"
    passed = {t["batch_size"] for t in result["trials"] if max(h["val_accuracy"] for h in t["history"]) >= TARGET}
    failed = {t["batch_size"] for t in result["trials"]} - passed
    assert len(passed) >= 3 and failed, "the study no longer has batch sizes on both sides of the target"

    proc = _bstune(forked_cli, "report", str(study_dir), "--target-metric", "val_accuracy", "--target-value", str(TARGET),
                   "--out", str(tmp_path / "given"), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cb = json.loads((tmp_path / "given" / "report.json").read_text())["critical_batch"]
    _check_points(cb, result["trials"], "val_accuracy", TARGET)
    assert f"val_accuracy ≥ {TARGET}" in proc.stdout

    proc = _bstune(forked_cli, "report", str(study_dir), "--target-metric", "val_accuracy", "--out", str(tmp_path / "default"),
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cb = json.loads((tmp_path / "default" / "report.json").read_text())["critical_batch"]
    assert cb["target"] == pytest.approx(_default_target(result["trials"], "val_accuracy"))
    assert cb["target"] > TARGET  # high: reached late, by two thirds of the batch sizes
    _check_points(cb, result["trials"], "val_accuracy", cb["target"])


@pytest.mark.slow
def test_python_api_reads_the_same_study_the_same_way(study_dir: Path) -> None:
    result = StudyResult.load(study_dir)
    assert result.direction_of("val_accuracy") is bstune.Direction.MAXIMIZE
    cb = result.report({"metric": "val_accuracy", "value": TARGET}).data["critical_batch"]
    _check_points(cb, result.trials, "val_accuracy", TARGET)


@pytest.mark.slow
def test_a_study_on_accuracy_maximizes_it_without_being_told(tmp_path: Path) -> None:
    (tmp_path / "task.py").write_text(TASK)
    task = load_task(tmp_path / "task.py")
    study = bstune.Study(task, SPACE_DICT, objective="val_accuracy", n_trials=3, budget_samples=1500, mode="baseline",
                         pruner="none", rescore_top=0, progress=False)  # fmt: skip
    result = study.run()
    assert result.direction == "maximize" and result.directions["val_accuracy"] == "maximize"
    assert result.optuna_study is not None
    assert result.optuna_study.user_attrs["bstune_directions"] == result.directions
    for t in result.trials:  # each trial's value is its best accuracy, and the best trial the most accurate
        assert t.value == pytest.approx(max(h["val_accuracy"] for h in t.history))
    assert result.best_value == pytest.approx(max(t.value for t in result.trials if t.value is not None))
    cb = result.report({"metric": "val_accuracy"}).data["critical_batch"]
    assert cb["target"] == pytest.approx(_default_target(result.trials, "val_accuracy"))


SPACE_DICT = {"name": "blobs", "batch_size": {"min": 4, "max": 128}, "lr": {"min": 0.01, "max": 1.0}}


@pytest.mark.slow
def test_an_older_result_json_still_reports_accuracy_the_right_way_round(tmp_path: Path, forked_cli: ForkedCli) -> None:
    old = json.loads(OLD_RESULT.read_text())
    old.pop("directions", None)  # as an older bstune wrote it (should the sample be regenerated)
    assert old["objective"] == "val_loss" and old["direction"] == "minimize"
    (tmp_path / "result.json").write_text(json.dumps(old))
    proc = _bstune(
        forked_cli, "report", str(tmp_path), "--target-metric", "val_accuracy", "--target-value", "0.97", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    cb = json.loads((tmp_path / "report.json").read_text())["critical_batch"]
    _check_points(cb, old["trials"], "val_accuracy", 0.97)


def test_a_target_direction_against_an_older_results_objective_is_refused_and_named_as_the_option() -> None:
    """The review: an older result holds no directions, but its objective's is the study's; and on the command line
    the error named --target-metric for what --target-direction said."""
    old = _result({})
    old.objective, old.direction = "val_score", "maximize"
    with pytest.raises(ConfigError, match=r"^--target-direction: 'val_score' is maximized in this study"):
        old.direction_of("val_score", source="--target-metric", field=None, given="minimize")
    assert old.direction_of("val_score", given="maximize") is bstune.Direction.MAXIMIZE


def test_a_target_direction_against_what_the_metrics_name_says_is_refused_as_a_study_refuses_it() -> None:
    """A newcomer's `bstune report runs/x --target-metric val_accuracy --target-value 0.95 --target-direction minimize`
    (the study's objective val_loss, its accuracy's direction read from the name) reported "val_accuracy ≤ 0.95:
    7 reached it by their first evaluation"; `bstune run` refuses the same direction for such an objective."""
    result = _result({"val_loss": "minimize"})  # a training function's study: its objective's direction only
    with pytest.raises(ConfigError, match=r"^--target-direction: 'minimize' contradicts 'val_accuracy', whose name"):
        result.direction_of("val_accuracy", source="--target-metric", field=None, given="minimize")
    assert result.direction_of("val_accuracy", given="maximize") is bstune.Direction.MAXIMIZE
    assert result.direction_of("val_score", given="minimize") is bstune.Direction.MINIMIZE  # the name does not say


def test_a_target_direction_against_a_guess_from_part_of_a_words_name_stands() -> None:
    """The word "loss" inside lossless_ratio read it as minimized, and --target-direction maximize was refused: the
    report could only read it the wrong way round."""
    result = _result({"val_loss": "minimize"})
    for t in result.trials:
        for h in t.history:
            h["lossless_ratio"] = h["val_accuracy"]
    assert result.direction_of("lossless_ratio", given="maximize") is bstune.Direction.MAXIMIZE
    assert result.direction_of("lossless_ratio") is bstune.Direction.MINIMIZE  # the guess, where nothing is given


def test_the_direction_doubt_reads_a_name_by_whole_words() -> None:
    """A review: lossless_ratio, maximized by the user's word (its name's guess gives way), skipped the check of a
    direction that made the objective worse in most trials, as if its name settled the direction."""
    from bstune.analysis._direction import direction_doubt

    falling = [{"status": "completed", "history": [{"lossless_ratio": v} for v in (0.9, 0.6, 0.2)]}] * 3
    assert direction_doubt(falling, "lossless_ratio", "maximize") is not None
    assert direction_doubt(falling, "val_loss", "maximize") is None  # a whole word: the name settles it
