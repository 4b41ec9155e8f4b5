"""The prior's learning-rate rule measured against the exhaustive grids.

The prior (``bstune/study/_prior.py``) places the learning rate at

    η*(B) = η_ref · (s(B) / s(B_ref))^α,   s(B) = 1 / (1/B + 1/B_noise),

α = 1 for SGD and ``prior.adam_alpha`` for Adam/AdamW, η_ref = ``prior.lr_anchor`` × the
probe's LR range-test ceiling at B_ref (8 × the probe batch), capped at that ceiling. This
benchmark asks each sweep grid (``benchmarks/sweep.py``) what the rule should have been:

* **Best η per batch size.** On the seed-averaged surface (the sweep seeds, every cell
  has them), the best cell of each B's row, refined by a parabola in log η through it and
  its two neighbours (the vertex, kept between the neighbours). A row whose best cell is
  at the grid's edge, or next to a diverged cell, keeps the cell's η and is flagged: an
  edge cell is a bound, not a measurement, and is left out of the fits.
* **α.** Least squares of log η*(B) = c + α·log s(B), with B_noise the probe's B_simple
  (geometric mean over the probe seeds), and of the pure power law log η* = c + α·log B.
  The interval is the wider of two: the regression's 95 % t-interval, and the 2.5-97.5 %
  percentiles of a bootstrap that resamples the grid's seeds and the probe's seeds.
* **Anchor.** The grid's best η at B_ref over the probe's ceiling there (``lr_anchor``
  is meant to be that ratio). When B_ref is not a batch size of the grid, or its row is
  an edge, the fitted curve's value at B_ref stands in (flagged "extrapolated"). Also
  given: the anchor that centres the rule *with today's α* on the grid (geometric mean
  over B of the grid's η* over the rule's η* at anchor 1), and today's rule (the Prior the
  probe builds, per probe seed) over the grid's η*, geometric mean and worst over B.

Probes are cached per problem in ``results/cache/probes_<problem>.json`` (they are
deterministic for a seed); ``python -m benchmarks.lr_rule`` writes ``results/lr_rule.md``
and ``results/lr_rule.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._provenance import run_facts
from benchmarks.problems import PROBLEMS, Problem, task_of
from benchmarks.sweep import cell_value

HERE = Path(__file__).resolve().parent
DEFAULT_PROBLEMS = ["char_lm", "char_lm_adamw", "digits_mlp", "digits_cnn"]
PROBE_SEEDS = [0, 1, 2, 3, 4]
BOOTSTRAP = 1000
COMPARE = "adam_alpha=0.5,lr_anchor=0.25"  # the defaults before benchmarks/lr_rule.py measured them
WIDEN = 10  # a range test that ran into the space's lr_max is repeated up to this multiple of it

log = logging.getLogger("benchmarks.lr_rule")


# -- the grid's best η per batch size ---------------------------------------------------------------


def best_lr(lrs: Sequence[float], values: Sequence[float | None]) -> tuple[float, bool]:
    """(η*, edge) of one row: the best cell, refined by a parabola in log η through it and its neighbours.

    ``values`` are the row's seed-averaged objectives (None: diverged). ``edge`` is True when the best
    cell has no finite neighbour on one side (the grid's end or a diverged cell): its η is then a bound.

    Example:
        >>> lrs = [0.01, 0.1, 1.0, 10.0]
        >>> eta, edge = best_lr(lrs, [(math.log10(x) + 0.5) ** 2 for x in lrs])  # minimum at 10^-0.5
        >>> round(eta, 4), edge
        (0.3162, False)
        >>> best_lr(lrs, [3.0, 2.0, 1.0, None])
        (1.0, True)
    """
    ok = [i for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if not ok:
        raise ValueError("every cell of the row diverged")
    i = min(ok, key=lambda k: values[k])  # type: ignore[arg-type,return-value]
    if i == 0 or i == len(values) - 1 or values[i - 1] is None or values[i + 1] is None:
        return lrs[i], True
    x0, x1, x2 = (math.log(lrs[k]) for k in (i - 1, i, i + 1))
    y0, y1, y2 = (float(values[k]) for k in (i - 1, i, i + 1))  # type: ignore[arg-type]
    # vertex of the parabola through the three points (Newton's divided differences)
    d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
    curv = (d12 - d01) / (x2 - x0)
    if curv <= 0:  # flat or concave: no interior minimum to refine to
        return lrs[i], False
    vertex = (x0 + x1) / 2 - d01 / (2 * curv)
    return math.exp(min(max(vertex, x0), x2)), False


def best_lrs(sweep: dict[str, Any], seeds: Sequence[int | str] | None = None) -> list[dict[str, Any]]:
    """Per batch size of the sweep: the grid's best η (``best_lr``) on the surface averaged over ``seeds``
    (default: the sweep seeds, which every cell has)."""
    spec = sweep["spec"]
    seeds = [str(s) for s in (seeds if seeds is not None else spec["seeds"])]
    out = []
    for batch in spec["batch_sizes"]:
        row = {c["lr"]: c for c in sweep["cells"] if c["batch_size"] == batch}
        values = [cell_value(row[lr], seeds) for lr in spec["lrs"]]
        try:
            eta, edge = best_lr(spec["lrs"], values)
        except ValueError:
            continue
        out.append({"batch_size": batch, "lr": eta, "edge": edge, "value": min(v for v in values if v is not None)})
    return out


# -- the fit ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RuleFit:
    """log η* = c + α·log s(B), s(B) = 1/(1/B + 1/B_noise) (B_noise = inf: the power law η* ∝ B^α)."""

    alpha: float
    c: float
    alpha_se: float  # the regression's standard error of α (nan with two points)
    alpha_ci: tuple[float, float]  # its 95 % t-interval
    b_noise: float
    n: int
    residual_rms: float  # in log η

    def lr(self, batch_size: float) -> float:
        return math.exp(self.c + self.alpha * math.log(s_of(batch_size, self.b_noise)))


def s_of(batch_size: float, b_noise: float) -> float:
    """s(B) = 1/(1/B + 1/B_noise); B itself when B_noise is infinite."""
    return 1.0 / (1.0 / batch_size + 1.0 / b_noise)


def fit_rule(batch_sizes: Sequence[float], lrs: Sequence[float], b_noise: float = math.inf) -> RuleFit:
    """Least squares of log η = c + α·log s(B) over the points (B, η).

    Example:
        >>> bs = [4, 8, 16, 32, 64]
        >>> f = fit_rule(bs, [0.01 * s_of(b, 100.0) ** 0.7 for b in bs], b_noise=100.0)
        >>> round(f.alpha, 6), round(f.residual_rms, 9)
        (0.7, 0.0)
    """
    from scipy import stats

    if len(batch_sizes) != len(lrs) or len(lrs) < 2:
        raise ValueError(f"need two or more (B, η) points, got {len(lrs)}")
    xs = [math.log(s_of(b, b_noise)) for b in batch_sizes]
    ys = [math.log(v) for v in lrs]
    n = len(xs)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        raise ValueError("the batch sizes do not vary")
    alpha = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    c = my - alpha * mx
    resid = [y - c - alpha * x for x, y in zip(xs, ys, strict=True)]
    sse = sum(r * r for r in resid)
    if n > 2:
        se = math.sqrt(sse / (n - 2) / sxx)
        half = float(stats.t.ppf(0.975, n - 2)) * se
        ci = (alpha - half, alpha + half)
    else:
        se, ci = math.nan, (math.nan, math.nan)
    return RuleFit(alpha, c, se, ci, b_noise, n, math.sqrt(sse / n))


def _geomean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


# -- the probe ---------------------------------------------------------------------------------------


def probe(problem: Problem, seed: int, cache: Path, lr_max: float | None = None) -> dict[str, Any]:
    """The probe a prior-mode study of the problem runs at ``seed`` (``ProbeResult.to_dict``), cached.

    ``lr_max`` replaces the space's largest learning rate (the range tests stop there).
    """
    from bstune.space import SearchSpace
    from bstune.study import probe_space

    key = str(seed) if lr_max is None else f"{seed}|lr_max={lr_max:g}"
    stored = json.loads(cache.read_text()) if cache.exists() else {}
    if key in stored:
        return dict(stored[key])
    space = SearchSpace.coerce(problem.space if lr_max is None else _widened(problem.space, lr_max))
    task = dataclasses.replace(task_of(problem.name), optimizer=space.optimizer, validate=False)
    result = probe_space(task, space, seed=seed, device="cpu").to_dict()
    stored = json.loads(cache.read_text()) if cache.exists() else {}  # re-read: cheap, and keeps other seeds
    stored[key] = result
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(stored, indent=1) + "\n")
    return result


def _widened(space: dict[str, Any], lr_max: float) -> dict[str, Any]:
    return space | {"lr": dict(space["lr"]) | {"max": lr_max}}


def ceiling_capped(problem: Problem, probes: Sequence[dict[str, Any]]) -> bool:
    """Whether the large-batch range test ran into the space's largest learning rate (its ceiling is then a
    lower bound, and the anchor measured against it an upper bound)."""
    from bstune.space import SearchSpace

    lr_max = SearchSpace.coerce(problem.space).lr_max
    return any(p["lr_ceiling_large"] >= 0.99 * lr_max for p in probes)


def anchor_at(points: Sequence[dict[str, Any]], alpha: float, b_noise: float, ceiling: float, b_ref: int) -> float:
    """The anchor that centres the rule with exponent ``alpha`` on the grid's (non-edge) points: the geometric
    mean over B of the grid's η* over the rule's η* at anchor 1."""
    return _geomean(
        [
            p["lr"] / (ceiling * (s_of(p["batch_size"], b_noise) / s_of(b_ref, b_noise)) ** alpha)
            for p in points
            if not p["edge"]
        ]
    )


def pooled_alpha(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One α for several problems (each its own intercept and B_noise): least squares over their non-edge
    points, with its 95 % t-interval, and per problem the anchor at that α."""
    from scipy import stats

    groups = []
    for r in results:
        bn = r["b_noise"] if r["b_noise"] is not None else math.inf
        pts = [p for p in r["points"] if not p["edge"]]
        groups.append(([math.log(s_of(p["batch_size"], bn)) for p in pts], [math.log(p["lr"]) for p in pts]))
    sxy = sxx = 0.0
    for xs, ys in groups:
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxx += sum((x - mx) ** 2 for x in xs)
        sxy += sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    alpha = sxy / sxx
    sse = 0.0
    for xs, ys in groups:
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sse += sum((y - my - alpha * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    df = sum(len(xs) for xs, _ in groups) - len(groups) - 1
    se = math.sqrt(sse / df / sxx) if df > 0 else math.nan
    half = float(stats.t.ppf(0.975, df)) * se if df > 0 else math.nan
    anchors = {
        r["problem"]: anchor_at(r["points"], alpha, r["b_noise"] or math.inf, r["lr_ceiling_large"], r["b_ref"])
        for r in results
    }
    return {
        "problems": [r["problem"] for r in results],
        "alpha": alpha,
        "alpha_se": se,
        "alpha_ci": [alpha - half, alpha + half],
        "anchor_at_alpha": anchors,
    }


# -- one problem ------------------------------------------------------------------------------------


def _fits(
    sweep: dict[str, Any], seeds: Sequence[str], probes: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], float, float, int, RuleFit, RuleFit]:
    points = best_lrs(sweep, seeds)
    inner = [p for p in points if not p["edge"]]
    b_noise = (
        _geomean([p["b_simple"] for p in probes if p["b_simple"]]) if any(p["b_simple"] for p in probes) else math.inf
    )
    ceiling = _geomean([p["lr_ceiling_large"] for p in probes])
    b_ref = round(statistics.median(p["large_batch"] for p in probes))
    bs, etas = [p["batch_size"] for p in inner], [p["lr"] for p in inner]
    return points, b_noise, ceiling, b_ref, fit_rule(bs, etas, b_noise), fit_rule(bs, etas)


def _anchor(points: list[dict[str, Any]], fit: RuleFit, ceiling: float, b_ref: int) -> tuple[float, bool]:
    at = [p for p in points if p["batch_size"] == b_ref and not p["edge"]]
    return (at[0]["lr"] / ceiling, False) if at else (fit.lr(b_ref) / ceiling, True)


def analyse_problem(
    problem: Problem,
    sweep: dict[str, Any],
    probes: Sequence[dict[str, Any]],
    boot: int = BOOTSTRAP,
    wide_probes: Sequence[dict[str, Any]] | None = None,
    compare: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Best η per B, α fitted both ways with intervals, the anchor, and today's rule against the grid.

    ``wide_probes``: the same probes (same seeds, same order) with a larger ``lr_max``, where the range test ran into the space's
    (``ceiling_capped``); the anchors are then also given against their ceiling (``*_uncapped``).
    ``compare``: prior settings (``adam_alpha``, ``lr_anchor``, ...) whose rule is also set against the grid.
    """
    from bstune.records import ProbeResult
    from bstune.space import SearchSpace
    from bstune.study import Prior

    seeds = [str(s) for s in sweep["spec"]["seeds"]]
    points, b_noise, ceiling, b_ref, fit, power = _fits(sweep, seeds, probes)
    anchor, extrapolated = _anchor(points, fit, ceiling, b_ref)
    space = SearchSpace.coerce(problem.space)
    family = space.optimizer.family
    alpha_today = 1.0 if family == "sgd" else space.prior.adam_alpha
    inner = [p for p in points if not p["edge"]]
    # the anchor that centres the rule with today's α on the grid's points
    anchor_at_alpha = anchor_at(points, alpha_today, b_noise, ceiling, b_ref)
    # the batch cap a study passes (the space's largest batch, else the training set): only the band uses it
    cap = space.batch_max or task_of(problem.name).n_train

    def rule_over_grid(sp: SearchSpace) -> dict[str, Any]:
        """The rule of ``sp``, built by the Prior exactly as a study builds it per probe seed, over the grid."""
        ratios: list[list[float]] = []
        for pr in probes:
            prior = Prior.for_space(ProbeResult.from_dict({k: v for k, v in pr.items() if k != "seed"}), sp, cap)
            ratios.append([prior.lr_rule(p["batch_size"]) / p["lr"] for p in inner])
        per_b = [_geomean([r[i] for r in ratios]) for i in range(len(inner))]
        return {
            "per_batch": {str(p["batch_size"]): r for p, r in zip(inner, per_b, strict=True)},
            "geomean": _geomean(per_b),
            "worst": max(per_b, key=lambda r: abs(math.log(r))),
        }

    rng = random.Random(0)
    boots: dict[str, list[float]] = {
        "alpha": [],
        "alpha_power": [],
        "anchor": [],
        "anchor_at_alpha": [],
        "anchor_uncapped": [],
    }
    for _ in range(boot):
        s_seeds = [rng.choice(seeds) for _ in seeds]
        picks = [rng.randrange(len(probes)) for _ in probes]
        s_probes = [probes[i] for i in picks]
        try:
            pts, bn, ceil, bref, f, pw = _fits(sweep, s_seeds, s_probes)
        except ValueError:
            continue
        boots["alpha"].append(f.alpha)
        boots["alpha_power"].append(pw.alpha)
        boots["anchor"].append(_anchor(pts, f, ceil, bref)[0])
        if wide_probes:  # the same probe seeds, their range tests allowed further
            wide_ceil = _geomean([wide_probes[i]["lr_ceiling_large"] for i in picks])
            boots["anchor_uncapped"].append(boots["anchor"][-1] * ceil / wide_ceil)
        boots["anchor_at_alpha"].append(anchor_at(pts, alpha_today, bn, ceil, bref))

    def pct(key: str) -> tuple[float, float]:
        v = sorted(boots[key])
        return (v[int(0.025 * (len(v) - 1))], v[int(0.975 * (len(v) - 1))]) if v else (math.nan, math.nan)

    def wider(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
        lows = [x for x in (a[0], b[0]) if math.isfinite(x)]
        highs = [x for x in (a[1], b[1]) if math.isfinite(x)]
        return (min(lows) if lows else math.nan, max(highs) if highs else math.nan)

    alpha_ci = wider(fit.alpha_ci, pct("alpha"))
    anchor_ci = pct("anchor")
    anchor_today = space.prior.lr_anchor
    uncapped: dict[str, Any] = {}
    if wide_probes:
        wide = _geomean([p["lr_ceiling_large"] for p in wide_probes])
        uncapped = {
            "lr_ceiling_large_uncapped": wide,
            "uncapped_lr_max": SearchSpace.coerce(problem.space).lr_max * WIDEN,
            "anchor_uncapped": anchor * ceiling / wide,
            "anchor_uncapped_ci": list(pct("anchor_uncapped")),
            "anchor_at_alpha_today_uncapped": anchor_at_alpha * ceiling / wide,
        }
    if compare:  # the same rule with other prior settings, e.g. the defaults before a change
        other = SearchSpace.coerce(problem.space | {"prior": dataclasses.asdict(space.prior) | compare})
        uncapped["compare"] = {"prior": compare, "rule_over_grid": rule_over_grid(other)}
    return uncapped | {
        "problem": problem.name,
        "family": family,
        "weight_decay": space.optimizer.weight_decay,
        "points": points,
        "probes": [
            {"seed": pr.get("seed")}
            | {
                k: pr[k]
                for k in ("b_simple", "b_simple_ci", "lr_ceiling", "lr_ceiling_large", "batch_size", "large_batch")
            }
            for pr in probes
        ],
        "b_noise": b_noise if math.isfinite(b_noise) else None,
        "lr_ceiling_large": ceiling,
        "b_ref": b_ref,
        "fit_s": {
            "alpha": fit.alpha,
            "alpha_se": fit.alpha_se,
            "alpha_ci_ols": list(fit.alpha_ci),
            "alpha_ci_bootstrap": list(pct("alpha")),
            "alpha_ci": list(alpha_ci),
            "c": fit.c,
            "n": fit.n,
            "residual_rms": fit.residual_rms,
        },
        "fit_power": {
            "alpha": power.alpha,
            "alpha_se": power.alpha_se,
            "alpha_ci_ols": list(power.alpha_ci),
            "alpha_ci_bootstrap": list(pct("alpha_power")),
            "alpha_ci": list(wider(power.alpha_ci, pct("alpha_power"))),
            "n": power.n,
            "residual_rms": power.residual_rms,
        },
        "anchor": anchor,
        "anchor_ci": list(anchor_ci),
        "anchor_extrapolated": extrapolated,
        "ceiling_capped": ceiling_capped(problem, probes),
        "anchor_at_alpha_today": anchor_at_alpha,
        "anchor_at_alpha_today_ci": list(pct("anchor_at_alpha")),
        "today": {"alpha": alpha_today, "lr_anchor": anchor_today},
        "rule_over_grid": rule_over_grid(space),
        "verdict": {
            "alpha": _inside(alpha_today, alpha_ci),
            # against the range test's own ceiling where the space's lr_max cut it short
            "anchor": _inside(anchor_today, uncapped.get("anchor_uncapped_ci", anchor_ci)),
        },
        "bootstrap": {
            "resamples": len(boots["alpha"]),
            "grid_seeds": seeds,
            "probe_seeds": [p.get("seed") for p in probes],
        },
    }


def _inside(value: float, ci: tuple[float, float] | list[float]) -> str:
    lo, hi = ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "undetermined"
    return "consistent" if lo <= value <= hi else ("too high" if value > hi else "too low")


# -- the report -------------------------------------------------------------------------------------


def _ci(ci: Sequence[float], fmt: str = ".2f") -> str:
    return f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if all(math.isfinite(v) for v in ci) else "[n/a]"


def render(
    results: list[dict[str, Any]],
    facts: dict[str, Any],
    pooled: dict[str, dict[str, Any]] | None = None,
    compare: dict[str, float] | None = None,
) -> str:
    m = facts["machine"]
    lines = [
        "# The LR rule against the grids",
        "",
        f"{facts['date']}, `{facts['command']}`, git {facts['git_commit']}"
        f"{' (bstune dirty)' if facts['git_dirty_bstune'] else ''}; {m['cpu_model']}, {m['logical_cores']} cores, "
        f"torch {m['torch']}. Method: `benchmarks/lr_rule.py` (module docstring).",
        "",
        "α: fitted log η*(B) = c + α·log s(B), B_noise from the probe; power law: log η* = c + α·log B. "
        "Intervals 95 % (the wider of the regression's and a bootstrap over grid and probe seeds). "
        "Anchor: the grid's best η at B_ref over the probe's LR ceiling at B_ref (today: `lr_anchor`). "
        "Rule/grid: today's rule η*(B) over the grid's best η, geometric mean over B (worst B); (compare): the same "
        f"with the prior settings {', '.join(f'{k} {v:g}' for k, v in (compare or {}).items()) or '(none)'}. "
        "≤: the range test ran into the space's largest η, so the ceiling is a lower bound and the anchor an upper "
        f"one (below: against the ceiling of a range test allowed {WIDEN}x further).",
        "",
        "| problem | optimizer | B_noise | B_ref | α (s(B)) | α (power law) | today α | anchor | anchor at today's α "
        "| today anchor | rule/grid | rule/grid (compare) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        fam = r["family"] + (f", wd {r['weight_decay']:g}" if r["weight_decay"] else "")
        fs, fp = r["fit_s"], r["fit_power"]
        rg = r["rule_over_grid"]
        verdict = f"α {r['verdict']['alpha']}, anchor {r['verdict']['anchor']}"
        bn = f"{r['b_noise']:.0f}" if r["b_noise"] else "∞"
        le = "≤ " if r["ceiling_capped"] else ""
        cg = r.get("compare", {}).get("rule_over_grid")
        cmp = f"{cg['geomean']:.2f} ({cg['worst']:.2f})" if cg else "–"
        lines.append(
            f"| {r['problem']} | {fam} | {bn} | {r['b_ref']} | {fs['alpha']:.2f} {_ci(fs['alpha_ci'])} "
            f"| {fp['alpha']:.2f} {_ci(fp['alpha_ci'])} | {r['today']['alpha']:g} "
            f"| {le}{r['anchor']:.3f} {_ci(r['anchor_ci'], '.3f')}{' (extrapolated)' if r['anchor_extrapolated'] else ''} "
            f"| {le}{r['anchor_at_alpha_today']:.3f} {_ci(r['anchor_at_alpha_today_ci'], '.3f')} "
            f"| {r['today']['lr_anchor']:g} | {rg['geomean']:.2f} ({rg['worst']:.2f}) | {cmp} | {verdict} |"
        )
    lines += ["", "## Best η per batch size (seed-averaged grid, parabola in log η; * = grid edge, not fitted)", ""]
    for r in results:
        pts = ", ".join(f"{p['batch_size']}: {p['lr']:.3g}{'*' if p['edge'] else ''}" for p in r["points"])
        probes = ", ".join(f"{p['b_simple']:.0f}" if p["b_simple"] else "∞" for p in r["probes"])
        ceil = ", ".join(f"{p['lr_ceiling_large']:.3g}" for p in r["probes"])
        lines.append(
            f"- **{r['problem']}**: {pts}. Probe B_simple {probes}; ceiling at B_ref {ceil}. "
            f"Residual rms (log η): s(B) {r['fit_s']['residual_rms']:.2f}, power law {r['fit_power']['residual_rms']:.2f}."
            + (
                f" Range test up to {r['uncapped_lr_max']:g}: ceiling {r['lr_ceiling_large_uncapped']:.3g}, anchor "
                f"{r['anchor_uncapped']:.3f} {_ci(r['anchor_uncapped_ci'], '.3f')} (at today's α "
                f"{r['anchor_at_alpha_today_uncapped']:.3f}); the verdict judges this anchor."
                if "anchor_uncapped" in r
                else ""
            )
        )
    if pooled:
        lines += ["", "## One α per family (least squares over the family's problems, each its own intercept)", ""]
        for family, pl in pooled.items():
            anchors = ", ".join(f"{k} {v:.3f}" for k, v in pl["anchor_at_alpha"].items())
            lines.append(
                f"- **{family}** ({', '.join(pl['problems'])}): α {pl['alpha']:.2f} {_ci(pl['alpha_ci'])}; "
                f"anchor at that α: {anchors}."
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(DEFAULT_PROBLEMS), help="comma-separated, with full sweeps")
    parser.add_argument("--probe-seeds", default=",".join(map(str, PROBE_SEEDS)))
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder (sweeps/ and cache/ in it)")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help="bootstrap resamples")
    parser.add_argument(
        "--compare",
        default=COMPARE,
        help="prior settings whose rule is also set against the grids, KEY=VALUE,... ('' for none)",
    )
    args = parser.parse_args(argv)
    compare = {k: float(v) for k, v in (kv.split("=", 1) for kv in args.compare.split(",") if kv)} or None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("bstune", "optuna"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    from bstune.space import SearchSpace

    torch.set_num_threads(1)
    names = [p for p in args.problems.split(",") if p]
    for p in names:
        if p not in PROBLEMS:
            parser.error(f"unknown problem {p!r}; choose from {', '.join(PROBLEMS)}")
        if not (args.out / "sweeps" / f"{p}.json").exists():
            parser.error(
                f"no full sweep of {p} in {args.out / 'sweeps'}: run python -m benchmarks.run --suite full "
                f"--measures sweep --problems {p}"
            )
    seeds = [int(s) for s in args.probe_seeds.split(",") if s]
    results = []
    for p in names:
        sweep = json.loads((args.out / "sweeps" / f"{p}.json").read_text())
        probes = []
        for s in seeds:
            log.info("probe %s seed %d", p, s)
            probes.append(probe(PROBLEMS[p], s, args.out / "cache" / f"probes_{p}.json") | {"seed": s})
        wide = None
        if ceiling_capped(PROBLEMS[p], probes):  # the anchor against the range test's own ceiling too
            lr_max = WIDEN * SearchSpace.coerce(PROBLEMS[p].space).lr_max
            log.info("probe %s: ceiling at the space's lr_max; probing again up to %g", p, lr_max)
            wide = [probe(PROBLEMS[p], s, args.out / "cache" / f"probes_{p}.json", lr_max) for s in seeds]
        results.append(analyse_problem(PROBLEMS[p], sweep, probes, args.bootstrap, wide, compare))
    pooled = {}
    for family, members in (("adam", ("adam", "adamw")), ("sgd", ("sgd",))):
        group = [r for r in results if r["family"] in members]
        if len(group) > 1:
            pooled[family] = pooled_alpha(group)
    facts = run_facts("-m", ["benchmarks.lr_rule", *(sys.argv[1:] if argv is None else argv)])
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"run": facts, "problems": results, "pooled": pooled}
    (args.out / "lr_rule.json").write_text(json.dumps(out, indent=1) + "\n")
    (args.out / "lr_rule.md").write_text(render(results, facts, pooled, compare))
    log.info("wrote %s and %s", args.out / "lr_rule.md", args.out / "lr_rule.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
