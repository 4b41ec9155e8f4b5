"""The report on a synthetic study whose steps-to-target law is known exactly."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from pathlib import Path

import pytest

from bstune.records import ProbeResult
from bstune.report import build_report
from bstune.report._markdown import render_markdown
from bstune.study import StudyResult, TrialRecord
from bstune.study._records import Rescored

S_MIN, B_CRIT, TARGET = 100.0, 128.0, 0.2


def _trial(
    number: int, batch: int, lr: float, budget: int = 200_000, n_evals: int = 20, steps_to_target: float | None = None
) -> TrialRecord:
    """train_loss(t) = exp(-t ln(1/TARGET) / S(B)): reaches TARGET at exactly S(B) = S_min (1 + B_crit/B) steps
    (or at ``steps_to_target``)."""
    s_b = steps_to_target or S_MIN * (1 + B_CRIT / batch)
    history = []
    for k in range(1, n_evals + 1):
        samples = budget * k // n_evals
        steps = samples / batch
        train = math.exp(-steps * math.log(1 / TARGET) / s_b)
        history.append(
            {
                "milestone": samples,
                "samples": samples,
                "step": int(steps),
                "lr": lr,
                "train_loss": train,
                "val_loss": train * (1 + batch / 2048),
                "gap": train * batch / 2048,
            }
        )
    value = min(h["val_loss"] for h in history)
    return TrialRecord(
        number=number,
        status="completed",
        batch_size=batch,
        lr=lr,
        temperature=lr / batch,
        value=value,
        samples=budget,
        params={},
        config={},
        history=history,
    )


def _result() -> StudyResult:
    trials = [_trial(i, b, 0.01 * b**0.8) for i, b in enumerate([16, 32, 64, 128, 256, 512, 1024])]
    best = min(trials, key=lambda t: t.value or math.inf)
    config = {
        "batch_size": best.batch_size,
        "lr": best.lr,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "warmup_samples": 0,
        "schedule": "constant",
        "temperature": best.temperature,
    }
    return StudyResult(
        study_name="synthetic",
        mode="baseline",
        objective="val_loss",
        direction="minimize",
        best_config=config,
        best_value=float(best.value or 0),
        trials=trials,
        probe=None,
        prior=None,
        budget_samples=200_000,
        samples_probe=0,
    )


def test_recovers_the_critical_batch_size_of_the_law() -> None:
    report = build_report(_result(), {"metric": "train_loss", "value": TARGET})
    cb = report.data["critical_batch"]
    assert cb["b_crit"] == pytest.approx(B_CRIT, rel=0.02)
    assert cb["s_min"] == pytest.approx(S_MIN, rel=0.02)
    assert cb["b_crit_ci"][0] <= B_CRIT * 1.001 and cb["b_crit_ci"][1] >= B_CRIT * 0.999  # exact data: ~zero width
    assert [p["reached"] for p in cb["points"]] == [True] * 7


def test_recommendation_is_actionable_and_the_lr_table_follows_the_fit() -> None:
    report = build_report(_result(), {"metric": "train_loss", "value": TARGET})
    rec = report.recommended
    assert rec["batch_size"] == 16 and rec["lr"] > 0  # the smallest gap in this synthetic study
    assert rec["expected_steps_to_target"] == pytest.approx(S_MIN * (1 + B_CRIT / 16), rel=0.03)
    table = {row["batch_size"]: row["lr"] for row in rec["lr_table"]}

    def s_of(b: float) -> float:  # 1/(1/B + 1/B_crit)
        return 1 / (1 / b + 1 / B_CRIT)

    for b in (32, 1024):
        assert table[b] / table[16] == pytest.approx(s_of(b) / s_of(16), rel=0.05)
    assert table[32] / table[16] > 1.8  # nearly linear well below B_crit ...
    assert table[1024] / table[512] < 1.15  # ... nearly flat well above it


def test_saves_json_and_markdown_a_person_can_act_on(tmp_path: Path) -> None:
    files = build_report(_result(), {"metric": "train_loss", "value": TARGET}).save(str(tmp_path))
    data = json.loads(Path(files["json"]).read_text())
    assert set(data) >= {
        "noise_scale",
        "critical_batch",
        "throughput",
        "compute_optimal",
        "generalization_gap",
        "recommended",
        "trials",
    }
    md = Path(files["md"]).read_text()
    head = md.split("## Gradient noise scale")[0]
    assert "Train with batch size 16 and learning rate" in head and "Expected cost" in head
    assert "| batch size | learning rate |" in head
    # exact points, but one run per batch size: the interval is one seed's spread wide, not the estimate itself
    assert "B_crit ≈ 128 (90% CI 102–160) from 7 batch sizes 16–1024" in md
    gap = md.split("\n## Generalization gap\n")[1].split("\n## ")[0]  # the section, up to the next heading
    assert "loss gap rises with batch size (Spearman ρ=1.00, p<0.001)" in gap and gap.rstrip().endswith("7 trials")


def test_default_target_and_missing_sections_say_why() -> None:
    report = build_report(_result())
    assert report.data["critical_batch"]["target"] > 0
    assert "error" in report.data["noise_scale"]  # baseline mode: no probe
    assert "error" in report.data["compute_optimal"]  # no throughput without a probe


def test_bad_target_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="report: target: unknown key"):
        build_report(_result(), {"metrik": "train_loss"})


def test_a_recommendation_nothing_re_scored_says_its_value_is_one_seeds() -> None:
    """`--rescore-seeds 0` turned re-scoring off and the report did not say so: its value read as any other's."""
    result = _result()
    assert result.rescored == []
    why = build_report(result).data["recommended"]["why"]
    assert why.endswith("; one seed each, not re-scored (rescore_top or rescore_seeds was 0)"), why


def test_a_rescored_recommendation_says_so_with_its_spread(tmp_path: Path) -> None:
    result = _result()
    result.rescored = [
        Rescored(trial=0, seeds=[7, 8], values=[0.30, 0.36, 0.33], samples=400_000),
        Rescored(trial=1, seeds=[7, 8], values=[0.31, None, 0.30], samples=400_000),
    ]
    result.best_trial, result.best_value = 0, 0.33
    files = build_report(result, {"metric": "train_loss", "value": TARGET}).save(str(tmp_path))
    data = json.loads(Path(files["json"]).read_text())
    rec = data["recommended"]
    assert rec["why"].startswith("best mean val_loss (0.33 ± 0.017 standard error, over 3 seeds)")
    # a newcomer's retrains at 10 fresh seeds came out worse than the reported mean, whose own seed was the lucky pick
    assert (
        "; over its 2 new seeds alone 0.345 ± 0.015, less optimistic: its own trial's seed is the draw it was picked on, so the mean over all seeds leans low"
        in rec["why"]
    )
    assert data["rescored"][0]["fresh_mean"] == pytest.approx(0.345) and data["rescored"][1]["fresh_mean"] is None
    assert [r["trial"] for r in data["rescored"]] == [0, 1] and data["rescored"][0]["batch_size"] == 16
    assert "rescored" not in rec  # not a hyperparameter to train with
    assert data["study"]["samples_rescore"] == 800_000 == result.samples_rescore
    md = Path(files["md"]).read_text()
    assert "values" not in md.split("## ")[1]  # the recommendation lists hyperparameters only
    assert "| 0 | 16 |" in md and "0.3, 0.36, 0.33 | 0.33 ± 0.017 | 0.345 ± 0.015 |" in md
    assert "failed at a seed" in md and "re-scoring 800,000" in md
    assert "The 2 best trials trained again at 2 more seeds" in md
    result.rescored = [Rescored(trial=0, seeds=[7], values=[0.30, 0.36], samples=200_000)]
    one = render_markdown(build_report(result, {"metric": "train_loss", "value": TARGET}).data)
    assert "The best trial trained again at 1 more seed (" in one  # not "The 1 best trials ... 1 more seeds"


def _probe(**fields: object) -> ProbeResult:
    base = ProbeResult(
        batch_size=32,
        lr_ceiling=1.0,
        lr_ceiling_large=2.0,
        large_batch=256,
        lr_probe=0.25,
        b_simple=180.0,
        b_simple_ci=(60.0, 540.0),
        trajectory=[],
        temperature=1e-3,
        throughput={32: 1000.0, 256: 6000.0},
        batch_ceiling=None,
        samples_used=20_000,
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def test_noise_scale_reports_the_curvature_b_noise_and_both_b_simple_intervals() -> None:
    probe = _probe(
        b_simple_sampling_ci=(150.0, 215.0),
        b_simple_seed_spread=0.6,
        b_noise=95.0,
        b_noise_ci=(70.0, 140.0),
        curvature={"b_noise": 95.0, "ci": [70.0, 140.0], "resolved": True, "b_simple": 170.0, "n_examples": 256},
    )
    result = dataclasses.replace(_result(), probe=probe, mode="prior")
    ns = build_report(result).data["noise_scale"]
    assert ns["measured_with_curvature"] is True
    assert ns["b_noise_curvature"] == 95.0 and ns["b_noise_curvature_ci"] == [70.0, 140.0]
    assert ns["b_simple_ci"] == [60.0, 540.0] and ns["b_simple_sampling_ci"] == [150.0, 215.0]
    md = render_markdown(build_report(result).data)
    section = md.split("## Gradient noise scale")[1].split("\n## ")[0]
    assert "B_noise = tr(HΣ)/(GᵀHG) = 95 (90% CI 70 .. 140)" in section
    assert "B_simple of the same 256 examples: 170" in section
    assert "at the measured parameters alone it is 150 .. 215" in section


def test_a_curvature_b_noise_that_bounds_nothing_says_so_instead_of_inf_from_0_to_inf() -> None:
    """A newcomer read 'B_noise = inf (90% CI 0 .. inf) ... (B_simple of the same 256 examples: n/a)'."""
    curvature = {"b_noise": None, "ci": [0.0, None], "resolved": False, "b_simple": None, "n_examples": 256}
    probe = _probe(b_noise=None, b_noise_ci=(0.0, None), curvature=curvature)
    md = render_markdown(build_report(dataclasses.replace(_result(), probe=probe, mode="prior")).data)
    section = md.split("## Gradient noise scale")[1].split("\n## ")[0]
    assert "inf" not in section and "n/a" not in section
    assert "B_noise = tr(HΣ)/(GᵀHG) was measured on 256 examples but bounds nothing: GᵀHG" in section


def test_an_interval_not_widened_for_another_seed_is_not_said_to_be() -> None:
    """A newcomer's loop returned its metrics at the end: the probe's run recorded no B_simple trajectory, so the
    interval stayed the sampling one, yet the report said it included the variation another seed would see."""
    probe = _probe(b_simple_ci=(150.0, 215.0), b_simple_sampling_ci=(150.0, 215.0), b_simple_seed_spread=None)
    md = render_markdown(build_report(dataclasses.replace(_result(), probe=probe, mode="prior")).data)
    section = md.split("## Gradient noise scale")[1].split("\n## ")[0]
    assert "widened by the spread" not in section
    assert "The interval is the sampling interval at the measured parameters alone" in section


def test_a_trajectory_spread_too_small_to_stand_in_for_another_seed_is_said_to_be() -> None:
    """A newcomer's function probe widened its interval by a log-sd of 0.028, so it stayed about as narrow as the
    sampling one, while the report said it included what another seed would see: two more seeds gave 2.1x."""
    for spread, warned in ((0.028, True), (0.6, False)):
        probe = _probe(b_simple_ci=(79.0, 139.0), b_simple_sampling_ci=(79.0, 138.0), b_simple_seed_spread=spread)
        md = render_markdown(build_report(dataclasses.replace(_result(), probe=probe, mode="prior")).data)
        section = md.split("## Gradient noise scale")[1].split("\n## ")[0]
        assert (
            f"widened by the spread of the probe run's own B_simple trajectory near the measurement (log-sd {spread:.2g})"
            in section
        )
        assert "a stand-in for the variation another seed would see" in section
        assert ("another seed's B_simple may well fall outside it" in section) is warned


def test_a_training_functions_report_does_not_send_it_to_a_measurement_it_refuses() -> None:
    """A newcomer's training-function report told them to run `critical_batch="measure"` or `bstune crit`, and both
    refuse a training function (they need a Task)."""
    task_md = render_markdown(build_report(dataclasses.replace(_result(), subject="task"), {"metric": "train_loss",
                              "value": TARGET}).data)  # fmt: skip
    fn_md = render_markdown(build_report(dataclasses.replace(_result(), subject="function"), {"metric": "train_loss",
                            "value": TARGET}).data)  # fmt: skip
    assert 'run the study with `critical_batch="measure"`, or `bstune crit SCRIPT FOLDER`' in task_md
    assert "bstune crit SCRIPT FOLDER" not in fn_md and "needs a bstune.Task" in _section(fn_md, "Critical batch size")


def test_a_recommendation_whose_training_ends_far_from_its_best_says_so_and_names_one_that_ends_best() -> None:
    """A newcomer's recommended config (best val_loss 0.0379 over its evaluations) ended training at 0.3345: its
    high rate went on past the best. The console printed 0.0379 only; bstune train --config gave 0.22."""
    from bstune.study._summary import format_summary

    result = _result()
    best = min(result.trials, key=lambda t: t.value or math.inf)
    result = dataclasses.replace(result, best_trial=best.number)
    worse = [dict(h) for h in best.history]
    worse[-1]["val_loss"] = 1e6 * best.value  # its last evaluation, far above its best one (and others' ends)
    trials = [dataclasses.replace(t, history=worse) if t is best else t for t in result.trials]
    data = build_report(dataclasses.replace(result, trials=trials), {"metric": "train_loss", "value": TARGET}).data
    far = data["recommended"]["ends_far_worse"]
    ends = {t.number: t.history[-1]["val_loss"] for t in trials}
    instead = min((n for n in ends if n != best.number), key=ends.__getitem__)
    assert far["end"] == pytest.approx(1e6 * best.value) and far["instead"]["trial"] == instead
    assert far["instead"]["end"] == pytest.approx(ends[instead]) and far["instead"]["among"] == "completed"
    md = render_markdown(data)
    assert "**Ends far from its best**" in md and f"trial {instead} (batch size" in md
    assert "ends_far_worse" not in md.split("Why:")[0]  # not listed among the settings to train with
    summary = format_summary(dataclasses.replace(result, trials=trials).to_dict())
    assert f"; {1e6 * best.value:.4f} at the last evaluation)" in summary
    assert "its last evaluation is far worse than its best" in summary
    plain = build_report(result, {"metric": "train_loss", "value": TARGET}).data["recommended"]
    assert "ends_far_worse" not in plain  # a run that ends near its best says nothing more


def test_noise_scale_says_why_there_is_no_curvature_b_noise() -> None:
    old = dataclasses.replace(_result(), probe=_probe(), mode="prior")  # a probe saved before issue #17
    ns = build_report(old).data["noise_scale"]
    assert ns["measured_with_curvature"] is False and "b_noise_curvature" not in ns
    assert "B_noise" not in render_markdown(build_report(old).data)
    skipped = dataclasses.replace(old, probe=_probe(curvature={"skipped": "the model has BatchNorm"}))
    md = render_markdown(build_report(skipped).data)
    assert "B_noise = tr(HΣ)/(GᵀHG) was not measured: the model has BatchNorm." in md


def _section(md: str, heading: str) -> str:
    return md.split(f"## {heading}")[1].split("\n## ")[0]


def test_the_training_set_size_and_why_each_unfinished_trial_ended_are_in_the_report() -> None:
    """A training function's data cap and a failed trial's reason reach report.md (they were only in
    the log and in report.json's traceback)."""
    base = _result()
    failed = dataclasses.replace(
        base.trials[0],
        number=7,
        status="failed",
        batch_size=615,
        value=None,
        history=[],
        message="BatchLargerThanDataError: ctx.loader: batch_size: 615 is larger than the training set (300 examples)",
        traceback="Traceback (most recent call last):\n  ...",
        n_train=300,
    )
    oom = dataclasses.replace(failed, number=8, status="oom", batch_size=256, message="CUDA out of memory\nmore")
    result = dataclasses.replace(base, trials=[*base.trials, failed, oom])
    data = build_report(result).data
    assert data["study"]["n_train"] == 300  # from the trials, as a baseline study has no probe
    trials = _section(render_markdown(data), "Trials")
    assert "Training set: 300 examples." in trials
    assert (
        "- Trial 7 (failed, batch 615): BatchLargerThanDataError: ctx.loader: batch_size: 615 is larger than "
        "the training set (300 examples)" in trials
    )
    assert "- Trial 8 (oom, batch 256): CUDA out of memory" in trials and "more" not in trials
    many = [dataclasses.replace(failed, number=100 + i) for i in range(12)]
    trials = _section(render_markdown(build_report(dataclasses.replace(base, trials=many)).data), "Trials")
    assert trials.count("- Trial ") == 10 and "- and 2 more" in trials
    clean = render_markdown(build_report(base).data)
    assert "Training set:" not in clean and "did not finish" not in clean  # nothing to say, nothing said


@pytest.mark.parametrize(
    ("b_simple", "n_train", "says"),
    [(180.0, 10_000, None), (180.0, 300, "over half the training set (300 examples)"), (180.0, 150, "at or above")],
)
def test_a_noise_scale_large_against_the_training_set_is_flagged(b_simple: float, n_train: int, says: str) -> None:
    result = dataclasses.replace(_result(), probe=_probe(b_simple=b_simple, n_train=n_train), mode="prior")
    data = build_report(result).data
    assert data["study"]["n_train"] == n_train  # the probe's
    section = _section(render_markdown(data), "Gradient noise scale")
    if says is None:
        assert "training set" not in section
    else:
        assert says in section


def test_a_fit_that_bounds_b_crit_nowhere_gives_no_expected_cost_and_no_fastest_batch() -> None:
    """A newcomer's study: steps to the target 107, 141, 103 at B = 69, 107, 126 (no trend). The fit's
    interval is 0–∞, yet the report gave an "expected cost" from it and a "fastest batch size"."""
    trials = [
        _trial(i, b, 0.07, budget=30_000, n_evals=60, steps_to_target=s)
        for i, (b, s) in enumerate([(69, 107), (107, 141), (126, 103)])
    ]
    result = dataclasses.replace(
        _result(),
        trials=trials,
        best_config={"batch_size": 126, "lr": 0.07},
        probe=_probe(throughput={32: 1000.0, 64: 1900.0, 128: 3500.0}),
        mode="prior",
    )
    data = build_report(result, target={"value": TARGET}).data
    cb = data["critical_batch"]
    assert cb["identified"] is False and cb["b_crit_ci"][0] == 0 and cb["b_crit_ci"][1] is None  # 0–∞
    assert "expected_steps_to_target" not in data["recommended"]
    assert "neither side" in data["compute_optimal"]["error"]
    md = render_markdown(data)
    assert "Expected cost" not in md and "Fastest to " not in md
    identified = build_report(_result()).data  # the law's trials: B_crit identified, both are given
    assert "expected_steps_to_target" in identified["recommended"]


def test_the_trials_table_lists_completed_trials_before_pruned_ones_whatever_their_early_values() -> None:
    base = _result()
    early = dataclasses.replace(base.trials[0], number=9, status="pruned", value=1e-9, samples=10_000)
    trials = _section(
        render_markdown(build_report(dataclasses.replace(base, trials=[early, *base.trials])).data), "Trials"
    )
    numbers = [int(m) for m in re.findall(r"^\| (\d+) \|", trials, flags=re.MULTILINE)]
    assert numbers[-1] == 9 and len(numbers) == len(base.trials) + 1


def test_the_critical_batch_section_says_how_its_target_was_chosen_and_how_trials_were_binned() -> None:
    """A newcomer met two different default targets (0.2267, 0.1099) with no word of where they came from,
    and a no-fit message listing fewer batch sizes than the trials ran at, the binning unexplained."""
    default = _section(render_markdown(build_report(_result()).data), "Critical batch size")
    assert "is the default: the hardest train_loss that two thirds of the batch sizes reach" in default
    given = build_report(_result(), target={"value": TARGET}).data
    assert given["critical_batch"]["target_chosen"] == "given"
    assert "is the default" not in _section(render_markdown(given), "Critical batch size")
    two = dataclasses.replace(_result(), trials=_result().trials[:2])  # too few batch sizes: no fit
    no_fit = _section(render_markdown(build_report(two).data), "Critical batch size")
    assert "(no fit)" in no_fit and "Trials ran at 2 batch sizes, 16–32; the fit takes, per half-octave" in no_fit


def test_the_lr_table_never_goes_past_the_range_tests_ceiling() -> None:
    """The rule extrapolates (linear in B where B_crit is not identified): a newcomer's table went to 5.43 at
    B=1024, with the range test's ceiling 1.79 at B=512. The ceiling only rises with B, so the test at a
    batch size bounds every row up to it, and the largest ceiling seen bounds the rows beyond."""
    result = dataclasses.replace(
        _slow_trials(_result()), probe=_probe(batch_size=32, lr_ceiling=0.15, large_batch=256, lr_ceiling_large=0.4)
    )
    report = build_report(result, {"metric": "train_loss", "value": TARGET})
    rows = {row["batch_size"]: row for row in report.recommended["lr_table"]}
    free = build_report(_result(), {"metric": "train_loss", "value": TARGET}).recommended["lr_table"]
    rule = {row["batch_size"]: row["lr"] for row in free}  # the same study without a probe: the rule's own rates
    for b, row in rows.items():
        # between the tests the ceiling is interpolated as a power of B (a row jumped 3x at the large test's)
        bound, at = (
            (0.15, 32) if b <= 32 else (0.15 * (b / 32) ** math.log(0.4 / 0.15, 8), b) if b < 256 else (0.4, 256)
        )
        assert row["lr"] == pytest.approx(min(rule[b], bound)), b
        if rule[b] > bound:
            cap = dict(row["capped_at"])
            assert cap.pop("between", None) == ([[32, 0.15], [256, 0.4]] if 32 < b < 256 else None), b
            assert row["rule_lr"] == pytest.approx(rule[b])
            assert cap == pytest.approx({"lr_ceiling": bound, "batch_size": at, "lr_max": False})
        else:
            assert "capped_at" not in row, b
    assert all("capped_at" in rows[b] for b in (32, 64, 2048))
    md = render_markdown(report.data)
    assert f"| 2048 | 0.4 (the rule gives {rule[2048]:.3g}, above the LR range test's ceiling 0.4 at B=256) |" in md
    assert (
        f"| 64 | {rows[64]['lr']:.3g} (the rule gives {rule[64]:.3g}, above the LR ceiling interpolated here between "
        "the range tests' 0.15 at B=32 and 0.4 at B=256) |"
    ) in md


def test_a_training_functions_adamw_study_gets_the_adam_familys_lr_rule() -> None:
    """A training function's best config names no optimizer (the loop built its own): the table used SGD's
    linear rule for a space declaring AdamW. The result keeps the space's family, and the table its rule."""
    from bstune.space import PriorSettings

    def s_of(b: float) -> float:
        return 1 / (1 / b + 1 / B_CRIT)

    result = dataclasses.replace(_result(), optimizer="adamw")
    assert "optimizer" not in result.best_config
    table = {
        r["batch_size"]: r["lr"]
        for r in build_report(result, {"metric": "train_loss", "value": TARGET}).recommended["lr_table"]
    }
    alpha = PriorSettings().adam_alpha
    assert table[256] / table[16] == pytest.approx((s_of(256) / s_of(16)) ** alpha, rel=0.05)
    assert StudyResult.from_dict(json.loads(json.dumps(result.to_dict()))).optimizer == "adamw"
    old = _result()  # written before results kept the family: SGD's rule, as before
    table = {
        r["batch_size"]: r["lr"]
        for r in build_report(old, {"metric": "train_loss", "value": TARGET}).recommended["lr_table"]
    }
    assert table[256] / table[16] == pytest.approx(s_of(256) / s_of(16), rel=0.05)


def test_a_capped_row_at_a_ceiling_that_is_lr_max_says_so() -> None:
    """A range test that ran to the space's lr.max with the loss still falling measured no ceiling: the
    newcomer's rows said "above the LR range test's ceiling 0.1", which was lr.max."""
    probe = _probe(batch_size=32, lr_ceiling=0.15, large_batch=256, lr_ceiling_large=0.15)
    probe = dataclasses.replace(probe, lr_ceiling_at_max=True, lr_ceiling_large_at_max=True)
    report = build_report(
        dataclasses.replace(_slow_trials(_result()), probe=probe), {"metric": "train_loss", "value": TARGET}
    )
    row = next(r for r in report.recommended["lr_table"] if r["batch_size"] == 2048)
    assert row["lr"] == 0.15 and row["capped_at"]["lr_max"] is True
    md = render_markdown(report.data)
    # the test at B=32 reached lr.max, so none ran at 256 (the probe and the console say so): a newcomer's table
    # named a test at B=256 that never ran
    assert row["capped_at"]["batch_size"] == 32
    assert (
        "above the space's lr.max, where the LR range test at B=32 still trained (a larger batch only raises the "
        "ceiling): raise lr.max" in md
    )
    assert "; none ran at 256: a larger batch only raises the ceiling" in md
    assert report.data["noise_scale"]["lr_ceiling_at_max"] is True


def _slow_trials(result: StudyResult) -> StudyResult:
    """The same study with every trial trained at a thousandth of its rate (far below any ceiling here); the
    LR table is anchored on the best config, which keeps its rate."""
    return dataclasses.replace(result, trials=[dataclasses.replace(t, lr=t.lr * 1e-3) for t in result.trials])


def test_a_rate_a_completed_trial_trained_at_raises_the_lr_tables_bound() -> None:
    """The range test is no hard bound: a trial completed at 0.743 at B=21 above the ceiling 0.702 measured
    at B=64. A row is never capped below a rate a completed trial trained at, at a batch size up to its own."""
    result = _slow_trials(_result())
    fast = dataclasses.replace(result.trials[1], lr=0.3)  # B=32, completed, above the 0.15 ceiling
    result = dataclasses.replace(
        result,
        trials=[result.trials[0], fast, *result.trials[2:]],
        probe=_probe(batch_size=32, lr_ceiling=0.15, large_batch=256, lr_ceiling_large=0.4),
    )
    report = build_report(result, {"metric": "train_loss", "value": TARGET})
    rows = {r["batch_size"]: r for r in report.recommended["lr_table"]}
    assert rows[16]["lr"] <= 0.15 and rows[32]["lr"] > 0.15  # from B=32 on, 0.3 is known to train
    assert "capped_at" not in rows[32] or rows[32]["lr"] == pytest.approx(0.3)
    capped = rows[2048]["capped_at"]  # the larger test's 0.4 is above 0.3: its bound stands
    assert capped == {"lr_ceiling": 0.4, "batch_size": 256, "lr_max": False}
    low = build_report(
        dataclasses.replace(
            result, probe=_probe(batch_size=32, lr_ceiling=0.15, large_batch=256, lr_ceiling_large=0.2)
        ),
        {"metric": "train_loss", "value": TARGET},
    )
    row = {r["batch_size"]: r for r in low.recommended["lr_table"]}[2048]
    assert row["lr"] == pytest.approx(0.3) and row["capped_at"]["by_trial"] is True
    assert row["capped_at"]["range_test_ceiling"] == pytest.approx(0.2)  # the large test's, which 0.3 beat
    assert (
        "capped at the highest rate a completed trial trained at, 0.3 at B=32, which is above the LR range "
        "tests' ceiling here, 0.2)" in render_markdown(low.data)
    )
    # a trial at lr.max (0.3) is not "above" a range test that ended a hair below it (a newcomer read "0.3 ...
    # above the ceiling, 0.3"): the range test's bound, at lr.max, stands
    hair = build_report(
        dataclasses.replace(
            result,
            probe=_probe(
                batch_size=32, lr_ceiling=0.15, large_batch=256, lr_ceiling_large=0.29999999999999974,
                lr_ceiling_large_at_max=True,
            ),
        ),
        {"metric": "train_loss", "value": TARGET},
    )  # fmt: skip
    row = {r["batch_size"]: r for r in hair.recommended["lr_table"]}[2048]
    assert row["capped_at"] == {"lr_ceiling": pytest.approx(0.3), "batch_size": 256, "lr_max": True}


def test_the_expected_cost_and_the_fastest_batch_carry_the_fits_intervals() -> None:
    """Steps to the target off the law by a few percent: every number the recommendation derives from the
    fit (expected steps and samples, the fastest batch size and its time) comes with its 90% interval."""
    wobble = [1.06, 0.95, 1.04, 0.97, 1.05, 0.94, 1.03]
    base = _result()
    trials = [
        _trial(t.number, int(t.batch_size or 0), float(t.lr or 0), steps_to_target=S_MIN * (1 + B_CRIT / b) * w)
        for t, b, w in zip(base.trials, [16, 32, 64, 128, 256, 512, 1024], wobble, strict=True)
    ]
    throughput = {b: b / (0.01 + 1e-4 * b) for b in (16, 64, 256, 1024)}
    result = dataclasses.replace(base, trials=trials, probe=_probe(throughput=throughput), mode="prior")
    data = build_report(result, {"metric": "train_loss", "value": TARGET}).data
    rec, cb = data["recommended"], data["critical_batch"]
    assert cb["identified"] is True
    lo, hi = rec["expected_steps_to_target_ci"]
    assert lo < rec["expected_steps_to_target"] < hi and lo < S_MIN * (1 + B_CRIT / rec["batch_size"]) < hi
    assert rec["expected_samples_to_target_ci"] == pytest.approx([rec["batch_size"] * lo, rec["batch_size"] * hi])
    assert cb["e_min_ci"][0] < cb["e_min"] < cb["e_min_ci"][1]
    device = data["compute_optimal"]["device"]
    b_lo, b_hi = device["batch_size_ci"]
    assert b_lo < device["batch_size"] < b_hi
    assert device["seconds_ci"][0] < device["seconds"] < device["seconds_ci"][1]
    md = render_markdown(data)
    assert f"{rec['expected_steps_to_target']:,.0f} steps [{lo:,.0f}–{hi:,.0f}]" in md
    assert f"batch size {device['batch_size']} (90% interval {b_lo:,}–{b_hi:,}; " in md
    assert "more than a trial's budget" not in md
    # a study whose budget the expected cost exceeds says so (a newcomer: 30,623 samples for trials of 30,000)
    data["study"]["budget_samples"] = int(rec["expected_samples_to_target"] * 0.98)
    assert f"more than a trial's budget of {data['study']['budget_samples']:,} samples: by the fitted curve" in (
        render_markdown(data)
    )
    assert "; 90% intervals of the fitted curve, from one run per batch size, so one run at another seed can land" in md
    # the two batch sizes the section gives, each said to answer its own question (a newcomer could not tell)
    assert device["batch_size"] > rec["batch_size"] and device["batch_size"] <= 1024
    rate = {row["batch_size"]: row["lr"] for row in rec["lr_table"]}.get(device["batch_size"])
    which = (
        f"Which batch size: {rec['batch_size']} is the study's answer for the best val_loss for 200,000 training "
        f"samples (what its trials were compared on); {device['batch_size']} is the answer where wall-clock time to "
        "the target on this hardware is what you are short of"
        + (f", trained at the table's rate for it ({rate:.3g})" if rate is not None else "")
        + ", at the cost of more samples to the target."
    )
    assert which in md
    same = dataclasses.replace(result, probe=_probe(throughput={64: 1000.0, 256: 1000.0}))  # flat: the least B
    md_same = render_markdown(build_report(same, {"metric": "train_loss", "value": TARGET}).data)
    assert "batch size 64 (the same anywhere in B_crit's 90% interval; " in md_same
    assert "**Here it was noisy**" not in md  # rates rising with B, no spread given
    # a newcomer's probe on a busy machine: rates 14x apart at one rung, and slower at 64 than at 16
    noisy_rates = dict(throughput) | {64: 0.5 * throughput[16]}
    noisy = dataclasses.replace(
        result, probe=_probe(throughput=noisy_rates, throughput_iqr={256: (300.0, 4200.0), 16: (900.0, 1100.0)})
    )
    data_noisy = build_report(noisy, {"metric": "train_loss", "value": TARGET}).data
    md_noisy = render_markdown(data_noisy)
    # the interval takes the 256 rung anywhere in its spread, so the choice's interval is wider than the rates
    # alone give it (which take the throughput as exact, as the text without a spread says)
    alone = build_report(
        dataclasses.replace(result, probe=_probe(throughput=noisy_rates)), {"metric": "train_loss", "value": TARGET}
    ).data
    lo, hi = data_noisy["compute_optimal"]["device"]["batch_size_ci"]
    lo_alone, hi_alone = alone["compute_optimal"]["device"]["batch_size_ci"]
    assert lo <= lo_alone and hi >= hi_alone and (lo, hi) != (lo_alone, hi_alone)
    assert "The intervals carry the S(B) fit's uncertainty and the spread of the probe's timed steps; " in md_noisy
    assert "the throughput is taken as the probe measured it" in render_markdown(alone)
    assert (
        "**Here it was noisy**: the middle half of its steps ran at 300–4,200 samples/s at batch size 256 (14x apart), "
        f"and samples/s fell from {throughput[16]:,.0f} at batch size 16 to {noisy_rates[64]:,.0f} at 64; so the "
        "fastest batch size is not settled"
    ) in md_noisy


def test_report_json_alone_says_what_the_probe_measured_and_where_the_prior_looked() -> None:
    """A newcomer could read the probe's batch sizes and LR ceilings in result.json but not in the report."""
    from bstune.study._prior import Prior

    probe = _probe(lr_ceiling_large_at_max=True, run={"batch_size": 64, "lr": 0.5, "seed": 0, "history": []})
    prior = Prior(
        b_noise=180.0, b_ref=256, lr_ref=0.5, alpha=1.0, batch_low=11, batch_high=180, lr_width=3.0,
        lr_min=1e-4, lr_max=2.0, momentum_ref=0.9, search_low=8, search_high=1024,
    )  # fmt: skip
    data = build_report(dataclasses.replace(_result(), probe=probe, prior=prior, mode="prior")).data
    assert data["probe"]["batch_size"] == 32 and data["probe"]["lr_ceiling"] == 1.0
    assert data["probe"]["large_batch"] == 256 and data["probe"]["lr_ceiling_large"] == 2.0
    assert data["probe"]["lr_ceiling_large_at_max"] is True
    assert data["probe"]["run"] == {"batch_size": 64, "lr": 0.5, "seed": 0}
    assert data["prior"]["batch_low"] == 11 and data["prior"]["search_batch_range"] == [8, 1024]
    section = render_markdown(data).split("## Gradient noise scale")[1].split("\n## ")[0]
    assert "lowest smoothed loss) of 1 at batch size 32 and ≥2 (the space's lr.max, reached unbroken) at 256" in section
    assert "trial-long run (batch size 64, learning rate 0.5)" in section
    assert "recorded that run as trial" not in section  # not a trial here (a space that searches more, say)
    base = _result()
    adopted = [dataclasses.replace(base.trials[0], from_probe=True), *base.trials[1:]]
    kept = dataclasses.replace(base, probe=probe, prior=prior, mode="prior", trials=adopted)
    kept_md = render_markdown(build_report(kept).data).split("## Gradient noise scale")[1].split("\n## ")[0]
    number = adopted[0].number
    assert f"; the study recorded that run as trial {number}, and counts its samples with the trials." in kept_md
    footer = render_markdown(build_report(kept).data).rstrip().splitlines()[-1]  # one probe cost, and why it is less
    assert footer.startswith("Samples spent: ") and f" besides its run, trial {number}, re-scoring" in footer
    assert " besides its run" not in render_markdown(build_report(dataclasses.replace(kept, trials=base.trials)).data)
    assert "first trials from batch sizes 11–180 (the search could draw from 8–1024)" in section
    assert "the rule η*(B) ∝ s(B), s(B) = 1/(1/B + 1/B_noise)" in section  # SGD: no "^1"
    # a newcomer read "B_noise = 188" as the curvature-aware B_noise: it is the probe's B_simple, said so
    assert f"with B_noise taken as the probe's B_simple, {probe.b_simple:.3g}, anchored at" in section
    centred = dataclasses.replace(prior, b_noise=1024.0)  # where B_simple was unresolved, the prior centres elsewhere
    centred_md = render_markdown(build_report(dataclasses.replace(_result(), probe=probe, prior=centred)).data)
    assert "with B_noise taken as 1,024 (the probe's B_simple was not resolved)" in centred_md
    assert "anchored at η*(256) = 0.5." in section
    # a band against the space's smallest batch, and an anchor below lr.min: both said
    odd = dataclasses.replace(prior, batch_low=8, batch_high=128, lr_ref=5e-5, alpha=0.8)
    odd_md = render_markdown(build_report(dataclasses.replace(_result(), probe=probe, prior=odd, mode="prior")).data)
    assert "batch sizes 8–128 (the band below B_noise, slid inside the batch sizes the search allows" in odd_md
    assert "s(B)^0.8" in odd_md and "(every rate clipped to the space's lr range, 0.0001–2)" in odd_md
    assert "probe" not in build_report(_result()).data  # baseline mode: no probe, no section


def test_a_b_simple_from_batchnorm_micro_batches_is_flagged_in_the_report() -> None:
    data = build_report(dataclasses.replace(_result(), probe=_probe(b_simple_micro_batch=16), mode="prior")).data
    assert data["noise_scale"]["micro_batch_size"] == 16
    section = render_markdown(data).split("## Gradient noise scale")[1].split("\n## ")[0]
    assert "Measured from micro-batches of 16: the model has BatchNorm" in section
    plain = render_markdown(build_report(dataclasses.replace(_result(), probe=_probe(), mode="prior")).data)
    assert "micro-batches of" not in plain


def test_the_data_parallel_choice_never_exceeds_the_training_set_and_says_what_it_extrapolates() -> None:
    """A newcomer's report with 4 workers recommended a batch of 2048 for a 2,000-example training set."""
    trials = [dataclasses.replace(t, n_train=1500) for t in _result().trials]
    throughput = {b: b / (0.01 + 1e-7 * b) for b in (16, 64, 256, 1024, 4096)}  # far from saturating
    result = dataclasses.replace(_result(), trials=trials, probe=_probe(throughput=throughput), mode="prior")
    data = build_report(result, {"metric": "train_loss", "value": TARGET}, n_workers=4).data
    wall = data["compute_optimal"]["wall"]
    assert wall["batch_size"] <= 1500 and wall["batch_size_ci"][1] <= 1500
    assert max(row["batch_size"] for row in data["recommended"]["lr_table"]) <= 1500  # the LR table too
    unbounded = build_report(
        dataclasses.replace(result, trials=_result().trials), {"metric": "train_loss", "value": TARGET}, n_workers=4
    ).data  # the training set's size unknown
    assert unbounded["compute_optimal"]["wall"]["batch_size"] > 1500  # the cap is the data's, not a constant
    md = render_markdown(data)
    assert "the throughput is taken as the probe measured it" in md


def test_the_headline_has_no_empty_brackets_when_only_batch_size_and_rate_were_chosen() -> None:
    result = dataclasses.replace(_result(), best_config={"batch_size": 16, "lr": 0.1})
    md = render_markdown(build_report(result).data)
    assert "**Train with batch size 16 and learning rate 0.1**." in md and "()" not in md.split("\n## ")[1]


def test_an_adam_familys_unbent_lr_rule_is_named_a_power_not_linear() -> None:
    # B_crit not identified (the trials still scale as 1/B), an AdamW space: lr ∝ B^0.8 from the recommended batch
    trials = [
        _trial(i, b, 0.001, budget=2_000_000, steps_to_target=320_000 / b) for i, b in enumerate([16, 32, 64, 128])
    ]
    result = dataclasses.replace(
        _result(), trials=trials, best_config={"batch_size": 16, "lr": 0.001, "optimizer": "adamw"}
    )
    rec = build_report(result, {"metric": "train_loss", "value": TARGET}).data["recommended"]
    assert rec["lr_rule_kind"] == "power" and "lr ∝ B^0.8" in rec["lr_rule"]


def test_the_report_says_whether_its_b_crit_verdict_holds_at_the_nearest_targets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A newcomer saw B_crit identified at one default target and not at a target 0.01 away, with no word of it.
    The fits at the nearest targets (one batch size fewer or more reaches them) go into report.json and the
    section says whether the verdict holds there."""
    held = build_report(_result(), {"metric": "train_loss", "value": TARGET}).data["critical_batch"]
    assert held["identified"] and not held["verdict_turns_on_target"] and held["nearby_targets"]
    for near in held["nearby_targets"]:  # the exact law: the same B_crit at any target
        assert near["identified"] and near["b_crit"] == pytest.approx(B_CRIT, rel=0.02)
    text = _section(render_markdown(build_report(_result(), {"value": TARGET}).data), "Critical batch size")
    assert "the fit identifies B_crit too: " in text and "turns on the target" not in text
    # B_crit = 512 with no batch size between 256 and 1024: only 1024 shows the flattening, and one target
    # harder 1024 no longer reaches it, so there the data say nothing of B_crit
    monkeypatch.setattr(sys.modules[__name__], "B_CRIT", 512.0)
    trials = [_trial(i, b, 0.01 * b**0.8) for i, b in enumerate([16, 32, 64, 128, 256, 1024])]
    report = build_report(dataclasses.replace(_result(), trials=trials), {"value": TARGET})
    cb = report.data["critical_batch"]
    assert cb["identified"] and cb["verdict_turns_on_target"] and cb["headline"]["turns_on_target"]
    (near,) = cb["nearby_targets"]  # every batch size reaches 0.2: no easier neighbour
    assert not near["identified"] and near["target"] < TARGET
    reached = {p["batch_size"] for p in cb["points"] if p["reached"]}
    assert 1024 in reached
    text = _section(render_markdown(report.data), "Critical batch size")
    assert (
        f"**Whether the data identify B_crit turns on the target**: at {near['target']:.4g}, where one batch " in text
    )
    assert "fewer reaches it, it does not. Read the verdict above as fragile" in text


def test_the_gap_section_leaves_out_trials_that_barely_learned_against_the_probes_first_batch() -> None:
    result = dataclasses.replace(_result(), probe=_probe(lr_range=[(1e-4, 2.31), (2e-4, 2.30)]), mode="prior")
    flat = [{"samples": s, "train_loss": 2.29, "val_loss": 2.292} for s in (100_000, 200_000)]
    stuck = [
        dataclasses.replace(result.trials[0], number=10 + i, batch_size=b, lr=1e-6, history=flat)
        for i, b in enumerate((16, 1024))
    ]
    data = build_report(dataclasses.replace(result, trials=[*result.trials, *stuck])).data
    gap = data["generalization_gap"]
    assert [t["number"] for t in gap["barely_learned"]] == [10, 11] and len(gap["trials"]) == 7
    assert gap["untrained_loss"] == 2.31 and gap["untrained_from"] == "probe"
    section = _section(render_markdown(data), "Generalization gap")
    assert "Left out: 2 trials 10, 11, whose final training loss got less than a quarter of the way" in section
    assert "(2.31, the probe's first batch)" in section
    from bstune.report._plots import render_plots

    assert render_plots(data)["gap"].png is not None  # drawn hollow beside the trials the trend counts


def test_the_trials_section_names_the_pruner_that_stopped_them() -> None:
    """The report never said which pruner stopped trials, and a resume may change it."""
    for pruner, said in (
        ("hyperband", "Pruner: hyperband, at the study's equal-sample milestones"),
        ("none", "No pruner: every trial that did not fail trained its whole budget."),
        (None, None),  # a result written before the pruner was kept
    ):
        md = render_markdown(build_report(dataclasses.replace(_result(), pruner=pruner)).data)
        section = md.split("## Trials")[1].split("\n## ")[0]
        assert (said in section) if said else ("runer" not in section)
