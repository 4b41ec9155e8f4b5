"""The report's figures, drawn with matplotlib's Agg renderer into PNG bytes.

One function per figure reads report.json's ``data`` and returns a :class:`Plot`:
the PNG, or a note saying why there is none (the section has an ``error`` or no data).

1. steps to target S against batch size B with the fitted S(B) = S_min (1 + B_crit/B)
   (McCandlish et al. 2018, eq. 2.11), B_crit and its interval marked;
2. the probe's B_simple over the samples it saw, with its interval band;
3. the validation − training loss gap against B and against the effective temperature η/(B(1−m));
4. the trials' (B, η) coloured by the objective, with the recommended lr(B) rule;
5. measured training throughput against B.

Figures are :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas
directly, never through pyplot: nothing is registered globally, so a report drawn
inside a notebook neither switches its backend nor closes its figures, and each
figure is freed when it goes out of scope.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from bstune._validate import finite

__all__ = ["Plot", "render_plots"]

_DPI = 150  # 9 in -> 1350 px, sharp when shown ~900 px wide on a high-density screen
_WIDE = (9.0, 4.4)  # shown ~900 px wide: 10 pt text reads as ~14 px, like the page
_BESIDE = (6.8, 4.4)  # the same scale, shown beside a narrow table
_BLUE, _ORANGE, _GREY, _RED = "#1f6feb", "#d9480f", "#6e7781", "#cf222e"


@dataclass(frozen=True)
class Plot:
    """One figure of the report: ``png`` is ``None`` when it was skipped, and ``note`` says why.

    Attributes:
        name: short key (``steps``, ``noise``, ``gap``, ``lr``, ``throughput``).
        title: what it shows, for a caption.
        png: the rendered PNG, or ``None``.
        note: why it was skipped, or a caveat about what is drawn.
    """

    name: str
    title: str
    png: bytes | None
    note: str = ""


def _num(x: Any) -> float | None:
    """``x`` as a finite float, else ``None`` (missing, non-numeric, inf or nan)."""
    return finite(x)


def _pos(x: Any) -> float | None:
    v = _num(x)
    return v if v is not None and v > 0 else None


def _interval(ci: Any) -> tuple[float | None, float | None]:
    """(low, high) of a JSON interval; ``None`` for a missing or unbounded end."""
    ends = list(ci) if isinstance(ci, (list, tuple)) else []
    return (_num(ends[0]) if ends else None), (_num(ends[1]) if len(ends) > 1 else None)


def _text(s: Any) -> str:
    """Data text for a matplotlib label: ``$`` would start mathtext."""
    return str(s).replace("$", r"\$")


def _plain(x: float, _tick: object = None) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.3g}"


def _log_ticks(lo: float, hi: float, base: float) -> list[float]:
    """Up to 8 round ticks in [lo, hi]: powers of two for base 2, else 1-2-5 per decade (finer on a narrow range)."""
    k0, k1 = math.floor(math.log(lo, base)) - 1, math.ceil(math.log(hi, base)) + 1
    ladders = (
        [(1.0,), (1.5,)]
        if base == 2
        else [(1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0), (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)]
    )
    ticks: list[float] = []
    for subs in ladders:
        more = [m * base**k for k in range(k0, k1 + 1) for m in subs]
        ticks = sorted({t for t in ticks + more if lo <= t <= hi * (1 + 1e-9)})
        if len(ticks) >= 3:
            break
    stride = math.ceil(len(ticks) / 8)
    return ticks[::stride]


def _log_axis(ax: Axes, which: str, lo: float, hi: float, base: float = 10) -> None:
    """Log scale on [lo, hi] with round ticks labelled as plain numbers, not powers."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    if which == "x":
        ax.set_xscale("log", base=base)
        ax.set_xlim(lo, hi)
    else:
        ax.set_yscale("log", base=base)
        ax.set_ylim(lo, hi)
    axis.set_major_locator(FixedLocator(_log_ticks(lo, hi, base)))
    axis.set_major_formatter(FuncFormatter(_plain))
    axis.set_minor_formatter(NullFormatter())
    if base == 2:
        axis.set_minor_locator(NullLocator())


def _span(values: Sequence[float], pad: float) -> tuple[float, float]:
    """[min / pad, max * pad] of positive values."""
    return min(values) / pad, max(values) * pad


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    fig.clear()
    return buf.getvalue()


def _steps(data: dict[str, Any]) -> Figure | str:
    cb = data.get("critical_batch") or {}
    if "error" in cb:
        return f"critical batch size not fitted: {cb['error']}"
    pts = [
        (b, s, bool(p.get("reached")))
        for p in cb.get("points", [])
        if (b := _pos(p.get("batch_size"))) and (s := _pos(p.get("steps")))
    ]
    if not pts:
        return "no steps-to-target points"
    bs, steps = [b for b, _, _ in pts], [s for _, s, _ in pts]
    s_min, e_min, b_crit = _num(cb.get("s_min")), _num(cb.get("e_min")), _pos(cb.get("b_crit"))  # b_crit None: ∞
    b_simple = _pos((data.get("noise_scale") or {}).get("b_simple"))
    near = [b for b in (b_crit, b_simple) if b and min(bs) / 8 <= b <= max(bs) * 8]  # marks far off would hide the data
    lo_b, hi_b = _span(bs + near, 1.6)
    fig = Figure(figsize=_WIDE, layout="constrained")
    ax = fig.add_subplot()
    if s_min is not None and e_min is not None and s_min + e_min > 0:
        grid = [lo_b * (hi_b / lo_b) ** (i / 199) for i in range(200)]  # S_min + E_min/B: finite at both edges
        ax.plot(grid, [s_min + e_min / b for b in grid], color=_BLUE, lw=1.6, label="fit S(B) = S_min (1 + B_crit/B)")
        ci_lo, ci_hi = _interval(cb.get("b_crit_ci"))
        lo_ci, hi_ci = max(ci_lo or 0.0, lo_b), hi_b if ci_hi is None else min(ci_hi, hi_b)  # None: unbounded
        if hi_ci > lo_ci:
            what = f"{ci_lo or 0:,.4g}–" + ("∞" if ci_hi is None else f"{ci_hi:,.4g}")
            ax.axvspan(lo_ci, hi_ci, color=_BLUE, alpha=0.08, lw=0, label=f"B_crit 90% interval {what}")
        if b_crit in near:
            unsure = cb.get("identified") is False  # older report.json files lack the key
            what = f"best fit B_crit = {b_crit:,.4g} (not identified)" if unsure else f"B_crit = {b_crit:,.4g}"
            ax.axvline(b_crit, color=_BLUE, ls="--", lw=1.1, label=what)
        if s_min > 0:
            ax.axhline(s_min, color=_GREY, ls=":", lw=1.1, label=f"S_min = {s_min:,.4g} steps")
            steps.append(s_min)
    if b_simple and b_simple in near:
        ax.axvline(b_simple, color=_ORANGE, ls="-.", lw=1.0, label=f"B_simple = {b_simple:,.4g} (probe)")
    reached = [(b, s) for b, s, r in pts if r]
    bounds = [(b, s) for b, s, r in pts if not r]
    if reached:
        ax.scatter(
            [b for b, _ in reached], [s for _, s in reached], s=36, color="black", zorder=3, label="reached the target"
        )
    if bounds:
        ax.scatter(
            [b for b, _ in bounds],
            [s for _, s in bounds],
            s=50,
            marker="^",
            facecolors="none",
            edgecolors=_RED,
            lw=1.3,
            zorder=3,
            label="did not reach it (lower bound on S)",
        )
    _log_axis(ax, "x", lo_b, hi_b, 2)
    _log_axis(ax, "y", *_span(steps, 1.5))
    ax.set_xlabel("batch size B (samples per step)")
    ax.set_ylabel("steps to target S (optimizer steps)")
    ax.set_title(_text(f"Steps to {cb.get('metric', 'target')} = {cb.get('target', float('nan')):.4g}"))
    fig.legend(loc="outside lower center", ncols=2)
    return fig


def _noise(data: dict[str, Any]) -> Figure | str:
    ns = data.get("noise_scale") or {}
    if "error" in ns:
        return str(ns["error"])
    rows = []
    for p in ns.get("trajectory") or []:
        x, y = _num(p.get("samples")), _num(p.get("b_simple"))
        if x is None or y is None:
            continue
        rows.append((x, y, *_interval(p.get("ci"))))
    if not rows:
        return "the probe recorded no B_simple trajectory"
    final, final_ci = _num(ns.get("b_simple")), _interval(ns.get("b_simple_ci"))
    ys = [y for _, y, _, _ in rows] + ([final] if final is not None else [])
    finite_hi = [h for *_, h in rows if h is not None] + [v for v in final_ci if v is not None]
    top = min(max(ys + finite_hi) * 1.08, max(max(ys), 1.0) * 3.0)  # a wide early interval must not flatten the rest
    bottom = min(0.0, *(lo for _, _, lo, _ in rows if lo is not None), *ys) * 1.08
    fig = Figure(figsize=_WIDE, layout="constrained")
    ax = fig.add_subplot()
    xs = [x for x, *_ in rows]
    ax.fill_between(
        xs,
        [bottom if lo is None else max(lo, bottom) for *_, lo, _ in rows],
        [top if hi is None else min(hi, top) for *_, hi in rows],
        color=_BLUE,
        alpha=0.18,
        lw=0,
        label="90% interval (clipped to the axes)",
    )
    ax.plot(xs, [y for _, y, _, _ in rows], "o-", color=_BLUE, ms=4, lw=1.4, label="B_simple during the probe run")
    if final is not None:
        ax.axhline(final, color=_ORANGE, ls="--", lw=1.1, label=f"final estimate {final:,.4g}")
        if final_ci[0] is not None:
            ax.axhspan(final_ci[0], top if final_ci[1] is None else final_ci[1], color=_ORANGE, alpha=0.08, lw=0)
    if bottom < 0:
        ax.axhline(0, color="black", lw=0.6)
    ax.set_ylim(bottom, top)
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}"))
    ax.set_xlabel("training samples seen by the probe run (samples)")
    ax.set_ylabel("B_simple = tr(Σ)/|G|² (samples)")
    temperature = _num(ns.get("temperature"))
    ax.set_title(
        "Gradient noise scale" + (f" at effective temperature η/(B(1−m)) = {temperature:.3g}" if temperature else "")
    )
    fig.legend(loc="outside lower center", ncols=3)
    return fig


def _gap(data: dict[str, Any]) -> Figure | str:
    gap = data.get("generalization_gap") or {}
    if "error" in gap:
        return f"generalization gap not computed: {gap['error']}"
    rows, never = (
        [
            (b, t, g)
            for r in gap.get(key) or []
            if (b := _pos(r.get("batch_size")))
            and (t := _pos(r.get("temperature")))
            and (g := _num(r.get("loss_gap"))) is not None
        ]
        for key in ("trials", "barely_learned")
    )
    if not rows and not never:
        return "no completed trial with both a training and a validation loss"
    fig = Figure(figsize=(9.0, 3.9), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    for ax, k, label, base in (
        (left, 0, "batch size B (samples per step)", 2),
        (right, 1, "effective temperature η/(B(1−m)) (per sample)", 10),
    ):
        xs = [r[k] for r in rows + never]
        ax.scatter([r[k] for r in rows], [r[2] for r in rows], s=30, color=_BLUE, edgecolors="white", lw=0.5, zorder=3)
        if never:
            ax.scatter(
                [r[k] for r in never],
                [r[2] for r in never],
                s=30,
                facecolors="none",
                edgecolors=_GREY,
                lw=1.0,
                zorder=3,
                label="barely learned (left out of the trend)",
            )
        ax.axhline(0, color="black", lw=0.6)
        _log_axis(ax, "x", *_span(xs, 1.4), base)
        ax.set_xlabel(label)
    if never:
        left.legend(loc="best", fontsize="small")
    left.set_ylabel("validation − training loss (loss units)")
    left.set_title("Gap against batch size")
    right.set_title("Gap against effective temperature")
    return fig


def _lr(data: dict[str, Any]) -> Figure | str:
    trials = [t for t in data.get("trials") or [] if _pos(t.get("batch_size")) and _pos(t.get("lr"))]
    if not trials:
        return "no trial with a batch size and a learning rate"
    fig = Figure(figsize=_BESIDE, layout="constrained")
    ax = fig.add_subplot()
    scored = [t for t in trials if _num(t.get("value")) is not None]
    unscored = [t for t in trials if _num(t.get("value")) is None]
    objective = _text((data.get("study") or {}).get("objective") or "objective")
    if scored:
        values = [float(t["value"]) for t in scored]
        log = min(values) > 0 and max(values) > 10 * min(values)  # a few diverged trials must not wash out the rest
        points = ax.scatter(
            [t["batch_size"] for t in scored],
            [t["lr"] for t in scored],
            c=values,
            cmap="viridis",
            norm=LogNorm() if log else None,
            s=40,
            edgecolors="white",
            lw=0.5,
            zorder=3,
            label="trial (colour: objective)",
        )
        bar = fig.colorbar(points, ax=ax, label=f"{objective} (objective{', log scale' if log else ''})", pad=0.01)
        if log:
            bar.set_ticks(_log_ticks(min(values), max(values), 10))
            bar.ax.yaxis.set_major_formatter(FuncFormatter(_plain))
            bar.ax.yaxis.set_minor_formatter(NullFormatter())
    if unscored:
        ax.scatter(
            [t["batch_size"] for t in unscored],
            [t["lr"] for t in unscored],
            marker="x",
            color=_GREY,
            s=30,
            zorder=3,
            label="trial without a value (pruned, failed, diverged)",
        )
    rec = data.get("recommended") or {}
    table = [
        (b, lr) for r in rec.get("lr_table") or [] if (b := _pos(r.get("batch_size"))) and (lr := _pos(r.get("lr")))
    ]
    if table:
        ax.plot(*zip(*table, strict=True), color=_ORANGE, lw=1.6, label="recommended lr(B), the table")
    rb, rlr = _pos(rec.get("batch_size")), _pos(rec.get("lr"))
    if rb and rlr:
        ax.scatter(
            [rb], [rlr], marker="*", s=220, color=_RED, edgecolors="black", lw=0.6, zorder=4, label="recommended"
        )
    bs = [float(t["batch_size"]) for t in trials] + ([rb] if rb else [])
    lo_b, hi_b = _span(bs, 1.6)  # the table may reach beyond the trials; keep the trials readable
    lrs = [float(t["lr"]) for t in trials] + [lr for b, lr in table if lo_b <= b <= hi_b]
    _log_axis(ax, "x", lo_b, hi_b, 2)
    _log_axis(ax, "y", *_span(lrs, 1.6))
    ax.set_xlabel("batch size B (samples per step)")
    ax.set_ylabel("learning rate η (per step, unitless)")
    ax.set_title("Learning rate against batch size")
    fig.legend(loc="outside lower center", ncols=2)
    return fig


def _throughput(data: dict[str, Any]) -> Figure | str:
    rates = (data.get("throughput") or {}).get("samples_per_s") or {}
    pts = sorted((b, r) for k, v in rates.items() if (b := _pos(_as_float(k))) and (r := _pos(v)))
    if not pts:
        return "throughput was not measured (it is measured by the probe, which baseline mode skips)"
    fig = Figure(figsize=_BESIDE, layout="constrained")
    ax = fig.add_subplot()
    b0, r0 = pts[0]
    ax.plot(
        [b for b, _ in pts],
        [r0 * b / b0 for b, _ in pts],
        color=_GREY,
        ls=":",
        lw=1.1,
        label="linear scaling from the smallest B",
    )
    ax.plot(*zip(*pts, strict=True), "o-", color=_BLUE, ms=5, lw=1.4, label="measured")
    co = data.get("compute_optimal") or {}
    best = _pos((co.get("device") or {}).get("batch_size"))
    if best:
        ax.axvline(best, color=_ORANGE, ls="--", lw=1.1, label=f"least time to target: B = {best:,.0f}")
    _log_axis(ax, "x", *_span([b for b, _ in pts], 1.4), 2)
    _log_axis(ax, "y", *_span([r for _, r in pts], 1.5))
    ax.set_xlabel("batch size B (samples per step)")
    ax.set_ylabel("training throughput (samples/s)")
    device = (data.get("throughput") or {}).get("device")
    ax.set_title(_text("Throughput" + (f" on {device}" if device else "")))
    ax.legend(loc="upper left")
    return fig


def _as_float(s: Any) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


_FIGURES: Sequence[tuple[str, str, Callable[[dict[str, Any]], Figure | str]]] = (
    ("steps", "Steps to target against batch size, with the S(B) fit", _steps),
    ("noise", "Gradient noise scale B_simple over the probe run", _noise),
    ("gap", "Generalization gap against batch size and effective temperature", _gap),
    ("lr", "Learning rate against batch size: trials and the recommended rule", _lr),
    ("throughput", "Training throughput against batch size", _throughput),
)


def render_plots(data: dict[str, Any]) -> dict[str, Plot]:
    """Every figure of the report, by name; a skipped one has ``png=None`` and a ``note``.

    Example:
        >>> plots = render_plots({"noise_scale": {"error": "no probe in this study (baseline mode)"}})
        >>> plots["noise"].png is None, plots["noise"].note
        (True, 'no probe in this study (baseline mode)')
    """
    out = {}
    with mpl.rc_context(
        {  # local to these figures: the caller's rcParams stay as they are
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "grid.linewidth": 0.6,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.fontsize": 8.5,
            "legend.frameon": False,
        }
    ):
        for name, title, draw in _FIGURES:
            made = draw(data)
            if isinstance(made, str):
                out[name] = Plot(name, title, None, made)
            else:
                out[name] = Plot(name, title, _png(made))
    return out
