"""The temperature a report shows is η/(B(1−m)), and it says so; it is no setting to train with.

Trials record the effective temperature η/(B(1−m)) (:func:`bstune.optim.temperature`),
10x η/B at momentum 0.9: every label must give that formula, and the settings a user
copies (``best_config``, the report's recommended settings) must hold settings only.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from bstune.optim import OptimizerSpec
from bstune.report import build_report
from bstune.report._plots import render_plots
from bstune.study import StudyResult
from bstune.study._recommend import handed_over
from tests.cli.cli_runner import ForkedCli
from tests.report.test_build import TARGET, _result
from tests.report.test_html import _with_probe

M = 0.9
LABEL = "η/(B(1−m))"


def _momentum_result() -> StudyResult:
    """The synthetic study at momentum 0.9, each trial's temperature recorded as the study records it."""
    result = _with_probe(_result())
    trials = [dataclasses.replace(t, temperature=t.lr / (t.batch_size * (1 - M))) for t in result.trials]
    return dataclasses.replace(result, trials=trials)


def test_markdown_labels_the_temperature_by_the_formula_that_computed_it() -> None:
    result = _momentum_result()
    md = build_report(result, {"metric": "train_loss", "value": TARGET}).to_markdown()
    assert "lr/B" not in md and "η/B" not in md
    table = md.split("## Trials")[1]
    assert f"| # | status | batch | lr | {LABEL} | value | samples |" in table
    rows = {int(r.split("|")[1]): r.split("|")[5].strip() for r in table.splitlines() if re.match(r"\| \d", r)}
    assert rows == {t.number: f"{t.lr / (t.batch_size * (1 - M)):.3g}" for t in result.trials}
    assert f"measured by the probe at effective temperature {LABEL} = 0.001" in md


def test_the_settings_to_train_with_hold_no_temperature() -> None:
    result = _momentum_result()
    assert "temperature" in result.best_config  # as results written before this held it
    report = build_report(result, {"metric": "train_loss", "value": TARGET})
    rec = report.recommended
    assert "temperature" not in rec
    assert rec["derived"]["effective_temperature"] == pytest.approx(rec["lr"] / (rec["batch_size"] * (1 - M)))
    settings = report.to_markdown().split("**Train with")[1].split("\n")[0]
    assert "momentum = 0.9" in settings and "temperature" not in settings and "derived" not in settings
    assert f"Derived from these settings, not one of them: effective temperature {LABEL} = " in report.to_markdown()
    loaded = StudyResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert "temperature" not in loaded.best_config  # an older result.json loads without it


def test_the_study_hands_over_settings_only() -> None:
    best = _momentum_result().trials[0]
    best = dataclasses.replace(
        best,
        config={
            "batch_size": best.batch_size,
            "lr": best.lr,
            "momentum": M,
            "weight_decay": 0.0,
            "warmup_samples": 0,
            "schedule": "constant",
            "model_kwargs": {"hidden": 8},
        },
    )
    config = handed_over(best, OptimizerSpec(), OptimizerSpec())
    assert "temperature" not in config and config["model.hidden"] == 8 and config["momentum"] == M


def test_plots_label_the_effective_temperature() -> None:
    data = build_report(_momentum_result(), {"metric": "train_loss", "value": TARGET}).data
    plots = render_plots(data)
    assert plots["gap"].title == "Generalization gap against batch size and effective temperature"
    html = build_report(_momentum_result(), {"metric": "train_loss", "value": TARGET}).to_html()
    assert "η/B" not in html and "lr/B" not in html and f"| {LABEL} |" not in html
    assert f"<th class=r>{LABEL}</th>" in html


@pytest.mark.slow
def test_bstune_report_prints_the_effective_temperature(tmp_path: Path, forked_cli: ForkedCli) -> None:
    (tmp_path / "result.json").write_text(json.dumps(_momentum_result().to_dict()))
    proc = forked_cli.completed(["report", str(tmp_path), "--target-value", str(TARGET)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.split("# bstune report")[0]
    header = next(line for line in summary.splitlines() if line.strip().startswith("#"))
    assert "lr/(B(1-m))" in header and "lr/B " not in header
    assert "lr/(B(1-m)): effective temperature, m = the SGD momentum (taken as 0 for Adam-family optimizers)" in summary
    best = next(line for line in summary.splitlines() if line.startswith("best config"))
    assert "momentum=0.9" in best and "temperature" not in best
    saved = json.loads((tmp_path / "report.json").read_text())
    assert "temperature" not in saved["recommended"] and "effective_temperature" in saved["recommended"]["derived"]


def test_every_recommended_key_is_a_setting_or_a_declared_note() -> None:
    """``bstune train --config report.json`` trains with the settings and skips the notes: a key that
    is neither would be refused there as an unknown parameter."""
    from bstune.report import RECOMMENDATION_NOTES

    result = _momentum_result()
    rec = build_report(result, {"metric": "train_loss", "value": TARGET}).recommended
    assert {"lr_table", "lr_rule_kind", "derived"} <= set(rec)  # the fit identified B_crit, so the rule is there
    settings = set(result.best_config) - {"temperature"}
    assert set(rec) - settings <= RECOMMENDATION_NOTES
    assert not settings & RECOMMENDATION_NOTES


def test_the_derived_temperature_is_the_chosen_trials_recorded_one() -> None:
    """A training function's config names no momentum; the trial recorded its temperature with the
    space's momentum, and that is the one the recommendation shows."""
    result = _momentum_result()
    config = {k: v for k, v in result.best_config.items() if k in ("batch_size", "lr")}
    best = next(t for t in result.trials if (t.batch_size, t.lr) == (config["batch_size"], config["lr"]))
    result = dataclasses.replace(result, best_config=config, best_trial=best.number)
    rec = build_report(result, {"metric": "train_loss", "value": TARGET}).recommended
    assert rec["derived"]["effective_temperature"] == pytest.approx(best.temperature)
    assert rec["derived"]["effective_temperature"] == pytest.approx(rec["lr"] / (rec["batch_size"] * (1 - M)))
