"""benchmarks/lr_rule.py: the grid's best η per batch size and the fit of the LR rule recover a known rule."""

from __future__ import annotations

import math
from typing import Any

import pytest

from benchmarks.lr_rule import (
    analyse_problem,
    best_lr,
    best_lrs,
    ceiling_capped,
    fit_rule,
    pooled_alpha,
    render,
    s_of,
)
from benchmarks.problems import Problem
from bstune.records import ProbeResult

BATCHES = [4, 8, 16, 32, 64, 128]
LRS = [float(f"{1e-3 * 10 ** (i / 4):.4g}") for i in range(9)]  # 1e-3 .. 0.1, 4 a decade, as char_lm's grid
SEEDS = [100, 101, 102]


def _true_lr(batch: float, alpha: float, b_noise: float, at_128: float = 0.04) -> float:
    return at_128 * (s_of(batch, b_noise) / s_of(128, b_noise)) ** alpha


def _sweep(alpha: float, b_noise: float, top: dict[int, float] | None = None, at_128: float = 0.04) -> dict[str, Any]:
    """A grid whose seed-averaged objective is a parabola in log η with its minimum on the rule.

    Each seed adds its own offset (moving no minimum) and a small tilt that cancels over the seeds.
    ``top`` moves a row's minimum to a given η (one past the grid's end makes an edge row).
    """
    cells = []
    for b in BATCHES:
        opt = (top or {}).get(b, _true_lr(b, alpha, b_noise, at_128))
        for lr in LRS:
            runs = {}
            for k, s in enumerate(SEEDS):
                x = math.log(lr / opt)
                runs[str(s)] = {"value": 2.0 + 0.05 * k + 0.1 * x * x + 0.01 * (k - 1) * x}
            cells.append({"batch_size": b, "lr": lr, "runs": runs})
    return {"spec": {"batch_sizes": BATCHES, "lrs": LRS, "seeds": SEEDS}, "cells": cells}


def _probe(seed: int, b_simple: float, ceiling: float) -> dict[str, Any]:
    data = ProbeResult(
        batch_size=16,
        lr_ceiling=ceiling,
        lr_ceiling_large=ceiling,
        large_batch=128,
        lr_probe=ceiling / 4,
        b_simple=b_simple,
        b_simple_ci=(b_simple * 0.8, b_simple * 1.2),
        trajectory=[],
        temperature=0.0,
        throughput={16: 1000.0},
        batch_ceiling=None,
        samples_used=1,
    ).to_dict()
    return data | {"seed": seed}


def _problem() -> Problem:
    def no_task() -> Any:
        raise AssertionError("the analysis must not build the task when the space caps the batch size")

    return Problem(
        name="synthetic",
        make_task=no_task,
        space={
            "name": "synthetic",
            "optimizer": {"family": "adamw", "weight_decay": 0.1},
            "batch_size": {"min": 4, "max": 512},
            "lr": {"min": 1e-4, "max": 0.1},
            "prior": {"adam_alpha": 0.5, "lr_anchor": 0.25},  # the verdicts below judge these, not the defaults
        },
        budget=1,
        sweep_batches={},
        sweep_lrs={},
        sweep_seeds={},
        noise_config=(8, 0.01),
    )


def test_best_lr_finds_the_parabolas_vertex_between_grid_points() -> None:
    for true in (0.0021, 0.0047, 0.013):
        values = [(math.log(lr / true)) ** 2 for lr in LRS]
        eta, edge = best_lr(LRS, values)
        assert not edge and eta == pytest.approx(true, rel=1e-9)


def test_best_lr_flags_the_grid_edge_and_a_diverged_neighbour() -> None:
    assert best_lr(LRS, [10.0 - i for i in range(9)]) == (0.1, True)
    values: list[float | None] = [(math.log(lr / 0.02)) ** 2 for lr in LRS]
    values[LRS.index(0.03162)] = None  # the best cell's upper neighbour diverged
    assert best_lr(LRS, values) == (0.01778, True)


def test_fit_recovers_a_known_alpha_with_and_without_b_noise() -> None:
    alpha, b_noise = 0.6, 40.0
    points = best_lrs(_sweep(alpha, b_noise))
    assert [p["batch_size"] for p in points] == BATCHES and not any(p["edge"] for p in points)
    for p in points:
        assert p["lr"] == pytest.approx(_true_lr(p["batch_size"], alpha, b_noise), rel=1e-6)
    fit = fit_rule([p["batch_size"] for p in points], [p["lr"] for p in points], b_noise)
    assert fit.alpha == pytest.approx(alpha, abs=1e-6) and fit.residual_rms < 1e-6
    assert fit.alpha_ci[0] <= alpha <= fit.alpha_ci[1]
    # the pure power law sees the bend at B_noise as a smaller exponent, and a worse fit
    power = fit_rule([p["batch_size"] for p in points], [p["lr"] for p in points])
    assert power.alpha < alpha - 0.1 and power.residual_rms > 0.05
    assert fit_rule([4, 8, 16], [0.01 * b**0.5 for b in (4, 8, 16)]).alpha == pytest.approx(0.5)


def test_analysis_reports_alpha_anchor_and_judges_todays_defaults(tmp_path: Any) -> None:
    alpha, b_noise, ceiling = 1.0, 1e9, 0.8  # a linear rule: the space's Adam α = 0.5 lies outside its interval
    probes = [_probe(s, b_noise, ceiling) for s in range(3)]
    sweep = _sweep(alpha, b_noise, top={128: 0.5}, at_128=0.08)  # B=128's best lies past the grid: an edge
    res = analyse_problem(_problem(), sweep, probes, boot=50, compare={"adam_alpha": 1.0})
    assert res["points"][-1]["edge"] and res["fit_s"]["n"] == 5
    assert res["fit_s"]["alpha"] == pytest.approx(alpha, abs=1e-3)
    assert res["verdict"]["alpha"] == "too low"
    # B_ref = 128 is an edge row, so the anchor is the fitted curve's η there over the ceiling: 0.08 / 0.8
    assert res["anchor_extrapolated"] and res["anchor"] == pytest.approx(0.1, rel=1e-3)
    assert res["verdict"]["anchor"] == "too high"  # today's 0.25 against a measured 0.1 (no seed spread)
    # today's rule (α 0.5, anchor 0.25 of 0.8 at B_ref) over the grid's best, at B=4: 0.2·(4/128)^0.5 / (0.08·4/128)
    assert res["rule_over_grid"]["per_batch"]["4"] == pytest.approx(0.2 * (4 / 128) ** 0.5 / (0.08 * 4 / 128), rel=1e-3)
    # with α = 1 the rule has the grid's shape: 0.25·0.8 / 0.08 = 2.5 times the grid's best at every B
    compared = res["compare"]["rule_over_grid"]["per_batch"]
    assert compared == {str(b): pytest.approx(2.5, rel=1e-3) for b in BATCHES[:-1]}
    md = render(
        [res],
        {
            "date": "d",
            "command": "c",
            "git_commit": "g",
            "git_dirty_bstune": False,
            "machine": {"cpu_model": "cpu", "logical_cores": 2, "torch": "t"},
        },
    )
    assert "| synthetic | adamw, wd 0.1 |" in md and "α too low, anchor too high" in md


def test_pooled_alpha_fits_one_exponent_across_problems_with_their_own_scale_and_b_noise() -> None:
    results = []
    for name, at_128, b_noise in (("a", 0.04, 40.0), ("b", 0.2, 300.0)):
        pts = best_lrs(_sweep(0.75, b_noise, at_128=at_128))
        results.append(
            {"problem": name, "points": pts, "b_noise": b_noise, "lr_ceiling_large": 10 * at_128, "b_ref": 128}
        )
    pooled = pooled_alpha(results)
    assert pooled["alpha"] == pytest.approx(0.75, abs=1e-6)
    assert pooled["alpha_ci"][0] <= 0.75 <= pooled["alpha_ci"][1]
    # each grid's η at B_ref is a tenth of its ceiling
    assert pooled["anchor_at_alpha"] == {"a": pytest.approx(0.1, rel=1e-6), "b": pytest.approx(0.1, rel=1e-6)}


def test_a_range_test_stopped_by_the_spaces_lr_max_is_flagged() -> None:
    assert ceiling_capped(_problem(), [_probe(0, 50.0, 0.03), _probe(1, 50.0, 0.1)])  # the space's lr max is 0.1
    assert not ceiling_capped(_problem(), [_probe(0, 50.0, 0.03)])


def test_the_default_adam_alpha_lies_inside_every_interval_the_committed_grids_measured() -> None:
    """benchmarks/results/lr_rule.json (``python -m benchmarks.lr_rule``): the Adam-family α of the rule's s(B) form,
    per problem and pooled. The square-root rule's 0.5 (the default before) lies outside them."""
    import json
    from pathlib import Path

    from bstune.space import PriorSettings

    measured = json.loads((Path(__file__).resolve().parents[1] / "benchmarks/results/lr_rule.json").read_text())
    adam = [r for r in measured["problems"] if r["family"] in ("adam", "adamw")]
    assert {r["problem"] for r in adam} >= {"char_lm", "char_lm_adamw"}
    intervals = [r["fit_s"]["alpha_ci"] for r in adam] + [measured["pooled"]["adam"]["alpha_ci"]]
    alpha = PriorSettings().adam_alpha
    assert all(lo <= alpha <= hi for lo, hi in intervals), (alpha, intervals)
