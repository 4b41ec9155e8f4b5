"""The critical batch size: fit S(B) = S_min (1 + B_crit/B) to steps-to-target data.

McCandlish et al. 2018 (eq. 2.11): the steps S and samples E = B·S to reach a target
trade off as (S/S_min − 1)(E/E_min − 1) = 1, i.e.

    S(B) = S_min (1 + B_crit/B),   E(B) = E_min (1 + B/B_crit),   B_crit = E_min/S_min.

Below B_crit doubling B halves the steps (perfect scaling); above it, steps stop
falling. The fit is least squares on log S (errors in steps-to-target are
multiplicative: the paper fits in log space too) with parameters a = ln S_min and
c = ln B_crit. For a fixed c the best a is closed form (the mean log residual), so
the fit is a one-dimensional search over c: a grid reaching 10⁴× beyond the batch
sizes tried, then Brent's method around the best grid point.

Intervals are profile-likelihood intervals with the F calibration of nonlinear
regression (Bates & Watts 1988, §6.1): a value of one parameter is inside when the
residual sum of squares, minimised over the other, stays below
RSS_min · (1 + F(1, n−2; level)/(n−2)). Unlike a bootstrap over 4–10 points they
need no resampling and they open honestly: when the data cannot rule out B_crit → ∞
(steps still ∝ 1/B at the largest batch tried) the upper end is ``inf``. Three or four
points can lie near the curve by chance, and one run per batch size is no more certain
than a seed moves it, so the level is never below RSS_min + σ²·χ²(1; level) with σ =
``step_noise`` (:data:`STEP_NOISE`, one seed's spread in ln S; 0 where the points are
means over seeds or several runs per batch size, whose residuals hold that spread).

The edges: if the best fit is B_crit → ∞ (every batch size tried is still in the
perfect-scaling regime) the fit reports ``b_crit = inf``, ``s_min = 0`` and the finite
E_min = B·S; if it is B_crit → 0 (steps do not depend on B), ``b_crit = 0``,
``e_min = 0``. ``edge`` says where the estimate lies relative to the batch sizes fitted;
outside them it is an extrapolation.

The fit *identifies* B_crit (:attr:`CriticalBatchFit.identified`) only when the estimate
lies within the batch sizes fitted and its interval is bounded at both ends. Otherwise
the summary says so plainly, with why, and what the data do bound, instead of an
estimate with an interval to infinity.

What the fit derives from the two parameters (S(B) and E(B) at a batch size, E_min) has an
interval of the same kind: the range of the quantity over the joint region of (ln S_min,
ln B_crit) whose residual sum of squares stays below the same level, which is the profile
interval of that quantity (Bates & Watts 1988, §6.5). For a fixed ln B_crit the RSS is a
parabola in ln S_min, so the region is, on a grid over the B_crit interval, an exact range of
ln S_min at each grid point (:meth:`CriticalBatchFit.steps_ci`, :attr:`e_min_ci`).

Censored points (:attr:`BatchPoint.lower_bound`, ``upper_bound``) are left out of
the least squares: a bound is not a measurement, and a Tobit-style likelihood would
need the noise level that 4–10 points estimate poorly. They are checked afterwards:
a bound the fitted curve violates by more than twice the residual RMS (or twice ``step_noise``,
whichever is larger) is listed in
``contradicted`` (e.g. a large batch that ran more steps than S(B) predicts and never
reached the target), a sign that the fit is optimistic there.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, overload

import numpy as np

from bstune.analysis._profile import (
    GRID,
    SPAN,
    FloatArray,
    crossing,
    lazy_scipy,
    log1p_ratio,
    profile_rss,
    s_min_interval,
)
from bstune.analysis._target import BatchPoint
from bstune.errors import ConfigError, EstimationError

__all__ = ["STEP_NOISE", "CriticalBatchFit", "fit_critical_batch", "interval_rise", "step_noise_of"]

# The spread of ln(steps to a target) from one seed to another at a fixed (B, η): across the benchmark grids
# (five problems, 3 seeds a cell, targets that a quarter to half of the cells reach) the median cell's sd is
# 0.03-0.04 on the char LMs, 0.08-0.11 on the digits problems and linreg (0.23 on the CNN at an easy target),
# the 90th percentile 0.07-0.4 (python -m benchmarks.step_noise, benchmarks/results/step_noise.md). A fit of one
# run per batch size is no more certain than that.
STEP_NOISE = 0.1
_EXACT_RSS = 1e-16  # relative to the spread of ln S: below this the data lie on the curve; intervals collapse


@dataclass(frozen=True)
class CriticalBatchFit:
    """S(B) = S_min (1 + B_crit/B), fitted in log space; see the module docstring.

    Attributes:
        b_crit: critical batch size E_min/S_min (``inf`` or ``0`` at the edges).
        b_crit_ci: profile-likelihood interval at ``confidence``; ends may be 0 or inf.
        s_min: fewest steps to the target, at B → ∞ (``0`` when b_crit is inf).
        s_min_ci: its interval.
        e_min: fewest samples to the target, at B → 0: S_min·B_crit.
        n_points: reached (uncensored) points in the fit.
        residual_rms: root mean square of the log residuals (≈ relative error of S).
        confidence: level of the intervals.
        batch_min, batch_max: smallest and largest batch size among those points.
        edge: ``"inside"`` when batch_min ≤ b_crit ≤ batch_max; ``"above"`` or
            ``"below"`` when the estimate lies beyond the batch sizes fitted.
        n_censored: bounds that were left out of the least squares.
        contradicted: batch sizes whose bound the fitted curve violates.
        contradictions: those bounds as ``(batch size, steps, never reached, learning rate)``: a trial that ran
            ``steps`` without reaching the target where the curve predicts fewer (``True``), or reached it by its
            first evaluation, within ``steps``, where the curve predicts more (``False``); the rate it trained at
            (``None`` where the point gave none).
        censored_batches: the batch sizes of those bounds, in order.
        early_batches: those of them that reached the target by their first
            evaluation (their steps are an upper bound, not a lower one).
        faster_than_linear: ``(B1, B2, S1, S2)``, the neighbouring batch sizes among the
            points between which steps fell the most beyond 1/B, where they fell more than
            1.5x beyond it (S1/S2 > 1.5·B2/B1; no S(B) of this form falls faster than 1/B, so
            something besides B changed, the learning rate most often); None where none did.
        log_points: the fitted points as (ln B, ln S), from which the intervals of derived
            quantities are computed.
        step_noise: the least spread of ln S per point the intervals allow (:func:`fit_critical_batch`).
    """

    b_crit: float
    b_crit_ci: tuple[float, float]
    s_min: float
    s_min_ci: tuple[float, float]
    e_min: float
    n_points: int
    residual_rms: float
    confidence: float
    batch_min: int
    batch_max: int
    edge: Literal["inside", "above", "below"]
    n_censored: int = 0
    contradicted: tuple[int, ...] = ()
    contradictions: tuple[tuple[int, float, bool, float | None], ...] = ()
    # every bound left out of the least squares, as contradictions holds them: (B, steps, never reached, lr)
    bounds: tuple[tuple[int, float, bool, float | None], ...] = field(default=(), repr=False)
    censored_batches: tuple[int, ...] = ()
    early_batches: tuple[int, ...] = ()
    faster_than_linear: tuple[int, int, float, float] | None = None
    log_points: tuple[tuple[float, float], ...] = field(default=(), repr=False)
    step_noise: float = 0.0

    @overload
    def predict_steps(self, batch_size: float) -> float: ...
    @overload
    def predict_steps(self, batch_size: FloatArray) -> FloatArray: ...
    def predict_steps(self, batch_size: float | FloatArray) -> float | FloatArray:
        """S(B) = S_min + E_min/B (the same curve, finite at both edges).

        Example:
            >>> fit = fit_critical_batch([(b, 100 * (1 + 64 / b)) for b in (8, 32, 128, 512)])
            >>> round(fit.b_crit, 6), round(fit.predict_steps(64), 6)
            (64.0, 200.0)
        """
        if isinstance(batch_size, np.ndarray):
            return self.s_min + self.e_min / batch_size
        return float(self.s_min + self.e_min / batch_size)

    def predict_samples(self, batch_size: float) -> float:
        """E(B) = B·S(B) = E_min + S_min·B."""
        return float(batch_size * self.predict_steps(float(batch_size)))

    def _region(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """The joint confidence region at :attr:`confidence`: ln B_crit on a grid across its interval,
        and at each the lowest and highest ln S_min inside the region (RSS ≤ the intervals' level).

        For a fixed c = ln B_crit the RSS is RSS_prof(c) + n (a − â(c))², a parabola in a = ln S_min,
        so the a-range is â(c) ± sqrt((level − RSS_prof(c))/n). An exact fit with no ``step_noise`` floor (or
        one without its points) collapses to the estimate; B_crit's open ends are reached to within 10⁻⁴ (``SPAN``).
        """
        x = np.array([p[0] for p in self.log_points])
        y = np.array([p[1] for p in self.log_points])
        if len(x) < 3 or self.b_ci_collapsed:  # the estimate alone; B_crit's edges as the grid's ends
            if 0 < self.b_crit < math.inf or not len(x):
                c0 = math.log(self.b_crit) if 0 < self.b_crit < math.inf else 0.0
            else:
                c0 = float(x.max()) + SPAN if self.b_crit > 0 else float(x.min()) - SPAN
            a0 = math.log(self.s_min) if self.s_min > 0 else math.log(max(self.e_min, 1e-300)) - c0
            return np.array([c0]), np.array([a0]), np.array([a0])
        n = len(x)
        rss_min = n * self.residual_rms**2
        level = rss_min + interval_rise(rss_min, n - 2, self.confidence, self.step_noise)
        lo, hi = self.b_crit_ci
        c_lo = math.log(lo) if lo > 0 else float(x.min()) - SPAN
        c_hi = math.log(hi) if math.isfinite(hi) else float(x.max()) + SPAN
        c = np.linspace(c_lo, c_hi, 4 * GRID)
        shape = log1p_ratio(c, x)
        a_hat = (y - shape).mean(axis=-1)
        rss = profile_rss(c, x, y)
        half = np.sqrt(np.clip(level - rss, 0.0, None) / n)
        keep = rss <= level * (1 + 1e-9)
        if not keep.any():  # the interval's ends are where rss == level: keep the best grid point at least
            keep = rss == rss.min()
        return c[keep], (a_hat - half)[keep], (a_hat + half)[keep]

    @property
    def b_ci_collapsed(self) -> bool:
        """Whether the points lie on the curve (to rounding), so every interval is the estimate itself."""
        return self.b_crit_ci[0] == self.b_crit_ci[1]

    def steps_ci(self, batch_size: float) -> tuple[float, float]:
        """Interval of S(B), the steps to the target at ``batch_size``, at :attr:`confidence`.

        Example:
            >>> import numpy as np
            >>> rng = np.random.default_rng(0)
            >>> fit = fit_critical_batch([(b, 100 * (1 + 64 / b) * np.exp(rng.normal(0, 0.05))) for b in (8, 32, 128, 512)])
            >>> lo, hi = fit.steps_ci(64)
            >>> bool(lo < fit.predict_steps(64) < hi), bool(lo < 200 < hi)  # the truth, S(64) = 200, inside
            (True, True)
        """
        c, a_lo, a_hi = self._region()
        shape = log1p_ratio(c, np.array([math.log(batch_size)]))[:, 0]
        return float(np.exp(np.min(a_lo + shape))), float(np.exp(np.max(a_hi + shape)))

    def samples_ci(self, batch_size: float) -> tuple[float, float]:
        """Interval of E(B) = B·S(B), the samples to the target at ``batch_size``."""
        lo, hi = self.steps_ci(batch_size)
        return batch_size * lo, batch_size * hi

    @property
    def e_min_ci(self) -> tuple[float, float]:
        """Interval of E_min = S_min·B_crit, the fewest samples to the target (0 where B_crit's interval reaches 0)."""
        c, a_lo, a_hi = self._region()
        lo = 0.0 if self.b_crit_ci[0] == 0 else float(np.exp(np.min(a_lo + c)))
        return lo, float(np.exp(np.max(a_hi + c)))

    def to_dict(self) -> dict[str, Any]:
        """The fit's numbers and its verdict, as report.json and a direct measurement store them."""
        return {
            "b_crit": self.b_crit,
            "b_crit_ci": list(self.b_crit_ci),
            "s_min": self.s_min,
            "s_min_ci": list(self.s_min_ci),
            "e_min": self.e_min,
            "e_min_ci": list(self.e_min_ci),
            "n_points": self.n_points,
            "residual_rms": self.residual_rms,
            "edge": self.edge,
            "identified": self.identified,
            "unidentified_because": self.unidentified_because(),
            "batch_min": self.batch_min,  # the batch sizes fitted: those that reached the target
            "batch_max": self.batch_max,
            # [B1, B2, S1, S2] where steps fell more than 1.5x faster than 1/B (trials differing beyond B)
            "faster_than_linear": list(self.faster_than_linear) if self.faster_than_linear else None,
            # [B, steps, never reached, lr]: bounds the curve violates (contradictions_text says them)
            "contradictions": [list(c) for c in self.contradictions],
            "summary": self.summary,
        }

    @property
    def identified(self) -> bool:
        """Whether the data pin B_crit down: the estimate within the batch sizes fitted, its interval bounded.

        Example:
            >>> fit_critical_batch([(b, 100 * (1 + 64 / b)) for b in (8, 32, 128, 512)]).identified
            True
            >>> fit_critical_batch([(b, 6400 / b) for b in (2, 4, 8, 16)]).identified  # still S ∝ 1/B
            False
        """
        lo, hi = self.b_crit_ci
        return self.edge == "inside" and lo > 0 and math.isfinite(hi)

    def unidentified_because(self) -> list[str]:
        """Why the data do not identify B_crit, in words (empty when :attr:`identified`)."""
        if self.identified:
            return []
        lo, hi = self.b_crit_ci
        pct = f"{100 * self.confidence:g}%"
        why = []
        steep = self._faster_than_linear_text()
        if self.edge == "above" and steep and math.isinf(self.b_crit):
            why.append(f"the best fit is pure 1/B scaling, with no B_crit, as the steepest S(B) of this form: {steep}")
        elif self.edge == "above":
            why.append(
                f"steps to the target still fall as 1/B up to the largest batch size fitted ({self.batch_max}), "
                "so the best fit has no B_crit at all"
                if math.isinf(self.b_crit)
                else f"the best fit, {_num(self.b_crit)}, lies above the largest batch size fitted ({self.batch_max})"
            )
        elif steep:
            why.append(steep)
        elif self.edge == "below":
            why.append(
                f"steps to the target do not fall with B over the batch sizes fitted ({self.batch_min}–{self.batch_max})"
                if self.b_crit == 0
                else f"the best fit, {_num(self.b_crit)}, lies below the smallest batch size fitted ({self.batch_min}): "
                "steps to the target barely depend on B there"
            )
        if lo == 0 and math.isinf(hi):
            why.append(f"its {pct} interval is 0–∞: any value fits the data")
        elif math.isinf(hi):
            why.append(f"its {pct} interval {_num(lo)}–∞ has no upper end")
        elif lo == 0:
            why.append(f"its {pct} interval 0–{_num(hi)} has no lower end")
        else:
            why.append(f"its {pct} interval is {_num(lo)}–{_num(hi)}")
        if self.edge == "inside" and why:
            why[-1] += f" (best fit {_num(self.b_crit)})"
        return why

    def _faster_than_linear_text(self) -> str:
        """The steepest fall of steps beyond 1/B, in words ("" where there is none)."""
        if self.faster_than_linear is None:
            return ""
        b1, b2, s1, s2 = self.faster_than_linear
        return (
            f"steps fell faster than 1/B from B = {b1} to {b2} ({_steps(s1)} to {_steps(s2)} steps, {s1 / s2:.3g}x fewer for "
            f"{b2 / b1:.3g}x the batch), which no S(B) = S_min(1 + B_crit/B) does: these trials differ in more than "
            "their batch size (learning rate, schedule), so the steps say as much about those as about B"
        )

    @property
    def summary(self) -> str:
        """One sentence for a report: B_crit with its interval, or plainly that the data do not identify it."""
        lo, hi = self.b_crit_ci
        pct = f"{100 * self.confidence:g}%"
        sizes = len({round(math.exp(b)) for b, _ in self.log_points}) if self.log_points else self.n_points
        if sizes < self.n_points:  # several runs per batch size (seeds of a direct measurement): count both
            fitted = (
                f"{self.n_points} runs at {sizes} batch sizes {self.batch_min}–{self.batch_max} that reached the target"
            )
        else:
            fitted = f"{self.n_points} batch sizes {self.batch_min}–{self.batch_max} that reached the target"
        bounds = ""
        if self.censored_batches and sizes < self.n_points and not self.early_batches:
            k, shown = self.n_censored, ", ".join(str(b) for b in self.censored_batches)
            at = f"batch size{'s' if len(self.censored_batches) > 1 else ''} {shown}"
            bounds = f"; {k} run{'s' if k > 1 else ''} at {at} that did not reach it only bound the fit"
        elif self.censored_batches:
            early = set(self.early_batches)
            never = [b for b in self.censored_batches if b not in early]
            said = []
            if never:
                k, shown = len(never), ", ".join(str(b) for b in never)
                said.append(f"{k} batch size{'s' if k > 1 else ''} that did not reach it ({shown})")
            if early:
                k, shown = len(early), ", ".join(str(b) for b in sorted(early))
                noun = "" if never else f" batch size{'s' if k > 1 else ''}"
                said.append(f"{k}{noun} that reached it by {'their' if k > 1 else 'its'} first evaluation ({shown})")
            bounds = f"; {' and '.join(said)} only bound the fit"
        against = self.contradictions_text()
        if self.identified:
            steep = self._faster_than_linear_text()
            return (
                f"B_crit ≈ {_num(self.b_crit)} ({pct} CI {_num(lo)}–{_num(hi)}) from {fitted}{bounds}; "
                f"S_min ≈ {_num(self.s_min)} steps ({_num(self.s_min_ci[0])}–{_num(self.s_min_ci[1])}), "
                f"E_min ≈ {_num(self.e_min)} samples ({_num(self.e_min_ci[0])}–{_num(self.e_min_ci[1])})"
                + (f"; but {steep}" if steep else "")
                + (f"; {against}" if against else "")
            )
        known = ""
        if lo > self.batch_min and math.isinf(hi):
            known = f"; B_crit is at least {_num(lo)} ({pct} lower bound)"
        elif lo == 0 and math.isfinite(hi) and hi < self.batch_max:
            known = f"; B_crit is at most {_num(hi)} ({pct} upper bound)"
        return (
            "the data do not identify B_crit: "
            + "; ".join(self.unidentified_because())
            + known
            + f"; fitted on {fitted}{bounds}"
            + (f"; {against}" if against else "")
            + f"; {self.next_step()}"
        )

    def next_step(self) -> str:
        """What would identify B_crit where these data do not: trials on the side it lies on, or more of them.

        Example:
            >>> fit_critical_batch([(b, 6400 / b) for b in (2, 4, 8, 16)]).next_step()
            'to bound it, run trials at batch sizes above 16 (each at a learning rate tuned for it: a search with a larger batch_size.max)'
        """
        if self.faster_than_linear is not None:
            steep = self._faster_than_linear_text()
            said = any(steep in why for why in self.unidentified_because())
            return ("" if said else f"{steep}; ") + (
                "to measure it, compare runs that differ in their batch size alone (a direct measurement does)"
            )
        if self.edge == "above":
            missed = sorted((b, s, lr) for b, s, never, lr in self.bounds if never and b > self.batch_max)
            if missed:
                shown = ", ".join(
                    f"B={b} after {_steps(s)} steps" + (f" at lr {lr:.3g}" if lr is not None else "")
                    for b, s, lr in missed
                )
                return (
                    f"trials above {self.batch_max} ran without reaching the target ({shown}), each at the search's "
                    "learning rate for it, not one tuned for its batch size: runs there at tuned rates would bound it"
                )
            return (
                f"to bound it, run trials at batch sizes above {self.batch_max} (each at a learning rate tuned for it: "
                "a search with a larger batch_size.max)"
            )
        if self.edge == "below":
            return (
                f"to bound it, run trials at batch sizes below {self.batch_min} (a search with a smaller "
                "batch_size.min)"
            )
        return "to narrow it, run more trials across these batch sizes, or measure it directly (over training)"

    def contradictions_text(self) -> str:
        """The bounds the fitted curve violates, in words ("" where it violates none).

        Example:
            >>> from bstune.analysis import BatchPoint
            >>> points = [(b, 100 * (1 + 64 / b)) for b in (8, 32, 128)]
            >>> fit = fit_critical_batch([*points, BatchPoint(512, 400.0, 204800.0, 0.1, lower_bound=True)])
            >>> print(fit.contradictions_text())
            the curve is contradicted where trials did not reach the target: at batch size 512 after 400 steps (the curve predicts 113); the fit is optimistic there (a trial runs at its own learning rate, so a miss may be its rate's)
        """
        never = [(b, s) for b, s, missed, _ in self.contradictions if missed]
        early = [(b, s) for b, s, missed, _ in self.contradictions if not missed]

        def listed(points: list[tuple[int, float]], word: str) -> str:
            first, *rest = points
            said = [f"batch size {first[0]} {word} {_steps(first[1])} steps (the curve predicts "]
            said[0] += f"{_steps(self.predict_steps(float(first[0])))})"
            said += [f"{b} {word} {_steps(s)} ({_steps(self.predict_steps(float(b)))})" for b, s in rest]
            return ", ".join(said)

        parts = []
        if never:
            parts.append(
                f"the curve is contradicted where trials did not reach the target: at {listed(never, 'after')}; "
                "the fit is optimistic there (a trial runs at its own learning rate, so a miss may be its rate's)"
            )
        if early:
            parts.append(
                f"the curve is contradicted where trials had reached the target by their first evaluation: at "
                f"{listed(early, 'within')}; the fit is pessimistic there"
            )
        return "; ".join(parts)


def _steps(x: float) -> str:
    """A step count as a reader would recompute a ratio from it: three figures below 1,000."""
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}"


def _num(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.3g}"


def _coerce(points: Iterable[BatchPoint | tuple[float, float]]) -> tuple[list[tuple[float, float]], list[BatchPoint]]:
    reached: list[tuple[float, float]] = []
    censored: list[BatchPoint] = []
    for p in points:
        if isinstance(p, BatchPoint):
            if p.censored:
                censored.append(p)
                continue
            b, s = float(p.batch_size), float(p.steps)
        else:
            b, s = (float(v) for v in p)
        if not (math.isfinite(b) and b > 0 and math.isfinite(s) and s > 0):
            raise EstimationError(f"each point needs a positive batch size and positive finite steps, got B={b}, S={s}")
        reached.append((b, s))
    return reached, censored


def _bounds_text(censored: list[BatchPoint]) -> str:
    """The censored points, said as what they are: not reached, or reached by the first evaluation."""
    never = sorted({p.batch_size for p in censored if p.lower_bound})
    early = sorted({p.batch_size for p in censored if p.upper_bound and not p.lower_bound})
    parts = []
    if never:
        parts.append(f"{len(never)} did not reach it ({', '.join(map(str, never))})")
    if early:
        one = len(early) == 1
        parts.append(
            f"{len(early)} reached it by {'its' if one else 'their'} first evaluation, so {'its' if one else 'their'} "
            f"steps are only an upper bound ({', '.join(map(str, early))})"
        )
    return "; " + "; ".join(parts) if parts else ""


def _advice(censored: list[BatchPoint]) -> str:
    """A harder target where the bounds are mostly early hits, an easier one where they are misses."""
    never = sum(1 for p in censored if p.lower_bound)
    early = sum(1 for p in censored if p.upper_bound and not p.lower_bound)
    if early > never:
        return "choose a harder target (one reached after the first evaluation) or evaluate more often"
    return "choose an easier target or run more batch sizes"


_STEEP = 1.5  # steps falling this much beyond 1/B between neighbours is more than noise in S (see faster_than_linear)


def _faster_than_linear(reached: list[tuple[float, float]]) -> tuple[int, int, float, float] | None:
    """The neighbouring batch sizes (fewest steps at each) between which steps fell the most beyond 1/B,
    where that is more than ``_STEEP``x; None where steps never fell that fast."""
    best: dict[float, float] = {}
    for b, s in reached:
        best[b] = min(s, best.get(b, math.inf))
    sizes = sorted(best)
    steepest, pair = _STEEP, None
    for b1, b2 in itertools.pairwise(sizes):
        excess = (best[b1] / best[b2]) / (b2 / b1)
        if excess > steepest:
            steepest, pair = excess, (int(b1), int(b2), best[b1], best[b2])
    return pair


def step_noise_of(points: Sequence[BatchPoint]) -> float:
    """The floor under a fit's intervals (:func:`~bstune.analysis.fit_critical_batch`'s ``step_noise``): none where
    every batch size that reached the target did so in two or more runs (seeds), whose scatter the residuals
    hold; one seed's spread where some batch size rests on one run.

    Example:
        >>> step_noise_of([BatchPoint(b, 10.0, 10.0 * b, 0.1) for b in (8, 8, 32, 32, 128, 128)])
        0.0
        >>> step_noise_of([BatchPoint(b, 10.0, 10.0 * b, 0.1) for b in (8, 32, 128)]) == STEP_NOISE
        True
    """
    counts = collections.Counter(p.batch_size for p in points if not p.lower_bound and not p.upper_bound)
    return 0.0 if counts and min(counts.values()) >= 2 else STEP_NOISE


def interval_rise(rss_min: float, dof: int, confidence: float, step_noise: float) -> float:
    """How far above its least RSS a profile interval reaches: from the residuals' own spread (F, with its few
    degrees of freedom), or from a spread of ``step_noise`` per point where that is larger (χ², a known variance).

    Example:
        >>> round(interval_rise(0.0, 2, 0.9, 0.1), 5)  # points exactly on the curve: one seed's spread still
        0.02706
    """
    stats = lazy_scipy().stats
    own = rss_min / dof * float(stats.f.ppf(confidence, 1, dof))
    return max(own, step_noise**2 * float(stats.chi2.ppf(confidence, 1)))


def fit_critical_batch(
    points: Iterable[BatchPoint | tuple[float, float]], *, confidence: float = 0.90, step_noise: float = STEP_NOISE
) -> CriticalBatchFit:
    """Fit S(B) = S_min (1 + B_crit/B) to :func:`steps_by_batch` points or ``(B, steps)`` pairs.

    The intervals are profile-likelihood ones, from the residuals' spread, and never narrower than a
    spread of ``step_noise`` in ln S per point allows: each point is one run at one seed, and another
    seed moves its steps to a target by about that much (:data:`STEP_NOISE`), however well three or four
    points happen to lie on the curve. ``step_noise=0`` trusts the residuals alone (exact data).

    Raises:
        EstimationError: fewer than 3 distinct batch sizes reached the target (two
            parameters need at least one degree of freedom left to judge the fit).
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"must be in (0, 1), got {confidence!r}", source="fit_critical_batch", field="confidence")
    reached, censored = _coerce(points)
    distinct = sorted({b for b, _ in reached})
    if len(distinct) < 3:
        shown = ", ".join(f"{b:g}" for b in distinct) or "none"
        tried = {b for b, _ in reached} | {p.batch_size for p in censored}
        advice = (  # a space that fixes the batch size: no target helps
            _advice(censored)
            if len(tried) >= 3
            else "it takes trials at 3 or more batch sizes, half an octave apart or more"
        )
        raise EstimationError(
            f"fitting S(B) = S_min(1 + B_crit/B) needs points that reached the target at >= 3 distinct batch sizes, "
            f"got {len(distinct)} ({shown}{_bounds_text(censored)}): {advice}"
        )
    x = np.log(np.array([b for b, _ in reached]))
    y = np.log(np.array([s for _, s in reached]))
    n = len(x)
    lo_c, hi_c = float(x.min()) - SPAN, float(x.max()) + SPAN
    grid = np.linspace(lo_c, hi_c, GRID)
    rss_grid = profile_rss(grid, x, y)
    i = int(np.argmin(rss_grid))

    def rss_c(c: float) -> float:
        return float(profile_rss(c, x, y))

    if i == 0:  # B_crit → 0: S does not depend on B
        log_b, start, rss_min = -math.inf, lo_c, float(((y - y.mean()) ** 2).sum())
    elif i == GRID - 1:  # B_crit → ∞: S ∝ 1/B, E = B·S constant
        z = y + x
        log_b, start, rss_min = math.inf, hi_c, float(((z - z.mean()) ** 2).sum())
    else:
        res = lazy_scipy().optimize.minimize_scalar(
            rss_c, bounds=(grid[i - 1], grid[i + 1]), method="bounded", options={"xatol": 1e-10}
        )
        log_b, start, rss_min = float(res.x), float(res.x), float(res.fun)

    if math.isinf(log_b) and log_b > 0:
        s_min, e_min = 0.0, float(np.exp(np.mean(y + x)))
    else:
        log_s = float(np.mean(y - log1p_ratio(log_b, x))) if math.isfinite(log_b) else float(y.mean())
        s_min = math.exp(log_s)
        e_min = s_min * math.exp(log_b)
    b_crit = math.exp(log_b) if math.isfinite(log_b) else (math.inf if log_b > 0 else 0.0)

    dof = n - 2
    rise = interval_rise(rss_min, dof, confidence, step_noise)
    if rise <= _EXACT_RSS * max(1.0, float(((y - y.mean()) ** 2).sum())):
        b_ci, s_ci = (b_crit, b_crit), (s_min, s_min)
    else:
        level = rss_min + rise
        down = crossing(rss_c, start, -1.0, level, lo_c)
        up = crossing(rss_c, start, +1.0, level, hi_c)
        b_ci = (0.0 if down is None else math.exp(down), math.inf if up is None else math.exp(up))
        s_ci = s_min_interval(x, y, s_min, level)

    rms = math.sqrt(rss_min / n)
    fit = CriticalBatchFit(
        b_crit=b_crit,
        b_crit_ci=b_ci,
        s_min=s_min,
        s_min_ci=s_ci,
        e_min=e_min,
        n_points=n,
        residual_rms=rms,
        confidence=confidence,
        batch_min=int(min(distinct)),
        batch_max=int(max(distinct)),
        edge="above" if b_crit > max(distinct) else "below" if b_crit < min(distinct) else "inside",
        n_censored=len(censored),
        censored_batches=tuple(sorted({p.batch_size for p in censored})),
        bounds=tuple((p.batch_size, float(p.steps), p.lower_bound, p.lr) for p in censored),
        early_batches=tuple(sorted({p.batch_size for p in censored if p.upper_bound and not p.lower_bound})),
        faster_than_linear=_faster_than_linear(reached),
        log_points=tuple(zip(x.tolist(), y.tolist(), strict=True)),
        step_noise=step_noise,
    )
    tol = 2.0 * max(rms, step_noise)  # a bound off the curve by less than a seed moves it contradicts nothing
    against = tuple(
        (p.batch_size, float(p.steps), p.lower_bound, p.lr)
        for p in censored
        if (p.lower_bound and math.log(max(p.steps, 1e-300)) - math.log(fit.predict_steps(float(p.batch_size))) > tol)
        or (p.upper_bound and math.log(fit.predict_steps(float(p.batch_size))) - math.log(max(p.steps, 1e-300)) > tol)
    )
    if not against:
        return fit
    return replace(fit, contradicted=tuple(c[0] for c in against), contradictions=against)
