"""The report with a direct measurement of B_crit: it leads, the advice rests on it, and a schedule follows it.

The measurement is a real :func:`bstune.critical.measure_critical_batch` on the closed form of
``tests/critical/test_branching.py`` (known B_crit per segment: 30, 100, 300; whole run ≈ 155),
attached to synthetic trials whose own fit says something else.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from bstune.report import build_report
from tests.critical.test_branching import WHOLE, ClosedForm, _measure
from tests.report.test_b_crit_claims import NOISE, TARGET, _study, _trial


@pytest.fixture(scope="module")
def measured() -> dict[str, object]:
    return _measure(ClosedForm(noise=0.0)).to_dict() | {"trial": 0}


def test_the_section_leads_with_the_measurement_and_the_advice_rests_on_it(measured: dict[str, object]) -> None:
    # trials whose fit gives B_crit ≈ 40 (S ∝ 1 + 40/B), far from the measured ≈ 155
    trials = [
        _trial(i, b, 500 * (1 + 40 / b) * n) for i, (b, n) in enumerate(zip((8, 16, 32, 64, 128), NOISE, strict=True))
    ]
    study = dataclasses.replace(_study(trials), critical_measured=measured)
    report = build_report(study, {"metric": "train_loss", "value": TARGET})
    cb = report.data["critical_batch"]
    assert cb["headline"]["source"] == "measured" and cb["headline"]["b_crit"] == pytest.approx(WHOLE, rel=1e-3)
    assert cb["advice_from"] == "measured"
    assert cb["b_crit"] == pytest.approx(40, rel=0.2)  # the trials' fit is still there, second
    rec = report.data["recommended"]
    assert rec["lr_rule_kind"] == "fitted_b_crit" and rec["lr_rule_b_crit"] == pytest.approx(WHOLE, rel=1e-3)
    md = report.to_markdown()
    section = md[md.index("## Critical batch size") :]
    assert section.index("**Measured directly**") < section.index("**Fitted to the study's own trials**")
    assert "B_crit from the direct measurement" in md  # the LR table says which fit it follows
    for start in ("0", "1,024", "2,048"):  # the trajectory table
        assert f"| {start} |" in section
    json.dumps(report.data)


def test_the_schedule_grows_with_the_measured_b_crit_and_applies_the_lr_rule(measured: dict[str, object]) -> None:
    trials = [_trial(i, b, 500 * (1 + 40 / b)) for i, b in enumerate((8, 16, 32, 64))]
    study = dataclasses.replace(_study(trials), critical_measured=measured)
    schedule = build_report(study, {"metric": "train_loss", "value": TARGET}).data["critical_batch"]["schedule"]
    stages = schedule["stages"]
    # local B_crit 30, 100, 300 from samples 0, 1024, 2048: powers of two at or below each, once it has doubled
    assert [(s["start_samples"], s["batch_size"]) for s in stages] == [(0, 16), (1024, 64), (2048, 256)]
    # η(B) = η_ref · s(B)/s(B_ref), s(B) = 1/(1/B + 1/B_crit) with the stage's B_crit (SGD: α = 1)
    ref_batch, ref_lr = 8, 0.05
    for s in stages:
        rule = 1 / (1 / s["batch_size"] + 1 / s["b_crit"]) / (1 / (1 / ref_batch + 1 / s["b_crit"]))
        assert s["lr"] == pytest.approx(ref_lr * rule, rel=1e-6)
    assert schedule["batch_schedule"][0] == [0, 16, stages[0]["lr"]]


def test_a_measurement_that_does_not_identify_b_crit_does_not_claim_the_advice(measured: dict[str, object]) -> None:
    """The section said of the measurement "the number the batch-size advice should rest on" while the LR
    table and the compute-optimal batch followed the trials' fit, which the report chose because the
    measurement's whole-run fit did not identify B_crit. It now says which, and why."""
    trials = [
        _trial(i, b, 500 * (1 + 40 / b) * n) for i, (b, n) in enumerate(zip((8, 16, 32, 64, 128), NOISE, strict=True))
    ]
    ladder = [int(p["batch_size"]) for p in measured["whole_points"]]  # type: ignore[index]
    flat = [  # steps still fall as 1/B over the whole ladder: B_crit beyond it, not identified
        {"batch_size": b, "steps": 6400 / b, "samples": 6400.0, "lr": 0.1, "lower_bound": False} for b in ladder
    ]
    study = dataclasses.replace(_study(trials), critical_measured=measured | {"whole_points": flat})
    report = build_report(study, {"metric": "train_loss", "value": TARGET})
    cb = report.data["critical_batch"]
    assert cb["advice_from"] == "fitted" and "does not identify B_crit" in cb["measured_set_aside"]
    md = report.to_markdown()
    assert "rests on the trials' fit instead: the whole run's fit does not identify B_crit (" in md
    assert "should rest on" not in md and "the most reliable number here" not in md
