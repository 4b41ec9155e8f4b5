"""The prior: where to look for batch size and learning rate, from the probe.

Batch size. A band from B_noise/batch_width² up to B_noise (the probe's B_simple; the
top is ``batch_top`` x B_noise, 1 by default),
clipped to what the space allows, what the dataset holds and what fit in memory; a
band pushed against a limit keeps its width and slides inward. Why below B_noise: a
trial's budget is a fixed number of samples, and above B_noise each sample buys
less (E = E_min(1 + B/B_crit)); B_noise is where extra parallelism stops paying.

Learning rate. McCandlish et al. 2018 (eq. 2.6) give the optimal SGD step as
ε_opt(B) = ε_max / (1 + B_noise/B): linear in B well below B_noise, flat above. With
s(B) = 1/(1/B + 1/B_noise) this is ε_opt ∝ s(B), so one rule serves both families:

    η*(B) = η_ref · (s(B) / s(B_ref))^α,   α = 1 for SGD, α ∈ [0.5, 1] for Adam/AdamW

(Adam's optimal rate grows more slowly with B: the square-root rule of Malladi et al.
2022 is η ∝ B^0.5.) The default ``adam_alpha`` is 0.8, not 0.5, because α here multiplies
log s(B), which already bends towards B_noise: fitted to the best rate per batch size of
seed-averaged grids (``benchmarks/lr_rule.py``, ``benchmarks/results/lr_rule.md``; B 4-128,
B_noise ≈ 50 from the probe), α = 0.78 [95 %: 0.67, 0.93] on the char LM with Adam and
1.01 [0.65, 1.37] with AdamW (weight decay 0.1), one α for both 0.90 [0.73, 1.07]; 0.5 is
outside all three, 0.8 inside. (As a pure power law η ∝ B^α the same grids give 0.51 and
0.69: Malladi's 0.5 is right for Adam in that form.) On these grids α = 0.5 put the rule
1.0x the best rate at B=4 but 0.57x at B=128 (Adam), 1.8x and 0.5x (AdamW). The reference point is the probe's LR range test at a large batch B_ref:
η_ref is ``lr_anchor`` (default 1/4) of its ceiling. The range test measures a stability
edge, set by curvature, not the noise-limited optimum, so it is taken where noise matters
least; the rule then scales the rate down for smaller batches. The anchor is measured against
whatever ceiling the range test reports, and the test stops at the space's ``lr.max``: on
the char LM (Adam and AdamW, ``lr.max`` 0.1) it stopped there, and against that ceiling the
grids' best rate at B_ref is 0.42-0.46 of it (extrapolated from B ≤ 128), while against the
ceiling of a range test allowed to 1.0 (0.43-0.47) it is 0.09-0.10 [0.06, 0.24]. A quarter
lies between, within 3x of both; for Adam the anchor is only as good as the ceiling. Why a quarter: on a
quadratic the best step is half the edge (divergence at 2/λ, best at 1/λ), but the best
*constant* rate of a fixed-budget run sits lower. Against exhaustive grids averaged over
seeds, the best rate at B_ref was the ceiling /3.2 (char LM, Adam), /4.9 (digits MLP) and
/7.7 (digits CNN); anchored at half, the rule came out 1.5-2x above the grids' best rates
and the studies picked lucky high-rate trials. Smith's LR range-test practice (2017) takes
1/3 to 1/10 of the loss-minimum rate. (A first version anchored at the small probe
batch and came out 1.5-4.7x above the best rates, in the single-seed study_vs_grid
benchmark that benchmarks/RESULTS.md supersedes.) When the search varies SGD momentum m, the rate is
scaled by (1 − m)/(1 − m_ref) so that the effective step η/(1 − m) follows the rule.

The prior is soft: it says where to look first, not where the search may go.

* **Coordinates.** The sampler searches two fixed ranges, so multivariate TPE can model
  them: ``u ∈ [0, 1]`` places B log-uniformly across the *whole* batch range the study
  allows (the space's minimum to the batch cap), and ``v ∈ [−ln W, ln W]`` sets
  η = η*(B)·e^v, with W = ``lr_search_width`` (30: the rule is searched to 30× either
  way, and never outside the space's [lr.min, lr.max]). Measuring η against the rule
  keeps TPE's coordinates aligned with the valley of good configs (η grows with B), which
  a box over (log B, log η) cuts diagonally.
* **Prior draws.** Trial n (from 0) is drawn from the prior, not asked of the sampler,
  with probability min(1, β/(n+1)), β = ``weight``: B log-uniform in the band
  [B_noise/batch_width², B_noise], v uniform in [−ln lr_width, ln lr_width]. The first β
  trials come from the prior; after that its share decays as β/n, the weight πBO
  (Hvarfner et al. 2022) gives a prior against n observations. Every trial, drawn either
  way, is an observation of the sampler (TPE), which therefore starts where the prior
  points and leaves it when trials elsewhere do better. A wrong prior costs about
  β·(1 + ln(n/β)) trials of n (≈ 9 of 24 at β = 3), against the baseline's random start.

Hard edges (a search confined to the band) were measured and dropped: the band missed the
grid's best batch size on 3 of 5 seeds of the digits MLP, and a confined search cannot
recover (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from bstune.records import ProbeResult

if TYPE_CHECKING:
    from bstune.space import SearchSpace

__all__ = ["Prior"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prior:
    """Batch-size band, learning-rate rule, and the search coordinates around them.

    ``batch_low``..``batch_high`` is the band the prior draws from; ``search_low``..
    ``search_high`` the batch range the search may reach (the band when unset).

    Example:
        >>> p = Prior(b_noise=100.0, b_ref=50, lr_ref=0.2, alpha=1.0, batch_low=25, batch_high=400,
        ...           lr_width=3.0, lr_min=1e-4, lr_max=10.0, momentum_ref=0.0, search_low=4, search_high=1024)
        >>> round(p.lr_rule(50), 3), round(p.lr_rule(100), 3), round(p.lr_rule(10_000), 3)  # linear, then flat
        (0.2, 0.3, 0.594)
        >>> p.batch_at(0.0), p.batch_at(1.0), [p.batch_at(u) for u in p.band_coords]  # the band inside the range
        (4, 1024, [25, 400])
        >>> [p.from_prior(n, seed=0) for n in range(3)]  # the first `weight` trials come from the prior
        [True, True, True]
    """

    b_noise: float
    b_ref: int
    lr_ref: float
    alpha: float
    batch_low: int
    batch_high: int
    lr_width: float
    lr_min: float
    lr_max: float
    momentum_ref: float
    batch_round: int = 1
    lr_cap: float | None = None  # the flat part: never above the range-test ceiling at a large batch
    search_low: int | None = None  # the batch range the search reaches; None: the band's ends
    search_high: int | None = None
    lr_search_width: float | None = None  # the search's v = ln(η/η*(B)) in ±ln of this; None: lr_width
    weight: float = 3.0  # β: trial n is a prior draw with probability min(1, β/(n+1))

    @property
    def batch_range(self) -> tuple[int, int]:
        """The batch sizes the search may reach (``u`` from 0 to 1)."""
        low = self.batch_low if self.search_low is None else min(self.search_low, self.batch_low)
        high = self.batch_high if self.search_high is None else max(self.search_high, self.batch_high)
        return low, high

    def _s(self, b: float) -> float:
        return 1.0 / (1.0 / b + 1.0 / self.b_noise)

    def lr_rule(self, batch_size: float, momentum: float | None = None) -> float:
        """η*(B), clipped to the space's [lr_min, lr_max]."""
        lr = self.lr_ref * (self._s(batch_size) / self._s(self.b_ref)) ** self.alpha
        if self.lr_cap is not None:
            lr = min(lr, max(self.lr_cap, self.lr_ref))
        if momentum is not None:
            lr *= (1.0 - momentum) / (1.0 - self.momentum_ref)
        return float(min(self.lr_max, max(self.lr_min, lr)))

    def batch_at(self, u: float) -> int:
        """Batch size at coordinate u ∈ [0, 1] (log-uniform across :attr:`batch_range`)."""
        low, high = self.batch_range
        lo, hi = math.log(low), math.log(high)
        b = math.exp(lo + min(1.0, max(0.0, u)) * (hi - lo))
        r = self.batch_round
        lowest = -(-low // r) * r  # multiples of batch_round inside the range
        highest = max(lowest, (high // r) * r)
        return int(min(highest, max(lowest, round(b / r) * r)))

    def coord_of(self, batch_size: float) -> float:
        """The coordinate ``u`` of a batch size (the inverse of :meth:`batch_at`, before rounding)."""
        low, high = self.batch_range
        if high == low:
            return 0.0
        return min(1.0, max(0.0, math.log(batch_size / low) / math.log(high / low)))

    @property
    def band_coords(self) -> tuple[float, float]:
        """The band's ends as coordinates ``u``: where prior draws place B."""
        return self.coord_of(self.batch_low), self.coord_of(self.batch_high)

    @property
    def band_v_range(self) -> tuple[float, float]:
        """Where prior draws place ``v``: the rule trusted to ``lr_width`` either way."""
        w = math.log(self.lr_width)
        return (-w, w)

    def from_prior(self, number: int, seed: int) -> bool:
        """Whether trial ``number`` (0, 1, ...) is drawn from the prior: with probability
        min(1, weight/(number+1)), decided by ``seed`` and ``number`` alone (any process agrees)."""
        share = min(1.0, self.weight / (number + 1))
        return share >= 1.0 or random.Random(f"bstune-prior-{seed}-{number}").random() < share

    def draw(self, number: int, seed: int) -> dict[str, float]:
        """Trial ``number``'s prior draw: ``batch_coord`` uniform across the band's coordinates,
        ``lr_coord`` across :attr:`band_v_range`."""
        rng = random.Random(f"bstune-prior-draw-{seed}-{number}")
        (u_lo, u_hi), (v_lo, v_hi) = self.band_coords, self.band_v_range
        return {"batch_coord": rng.uniform(u_lo, u_hi), "lr_coord": rng.uniform(v_lo, v_hi)}

    def lr_at(self, batch_size: int, v: float, momentum: float | None = None) -> float:
        """Learning rate at coordinate v (log-ratio to the rule)."""
        return min(self.lr_max, max(self.lr_min, self.lr_rule(batch_size, momentum) * math.exp(v)))

    @property
    def v_range(self) -> tuple[float, float]:
        """The search's range of ``v`` = ln(η/η*(B))."""
        w = math.log(max(self.lr_width, self.lr_search_width or self.lr_width))
        return (-w, w)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def for_space(cls, probe: ProbeResult, space: SearchSpace, batch_cap: int) -> Prior:
        """``from_probe`` with every setting taken from a search space (its ``prior`` section, limits and optimizer)."""
        settings = space.prior
        return cls.from_probe(
            probe,
            family=space.optimizer.family,
            adam_alpha=settings.adam_alpha,
            batch_width=settings.batch_width,
            batch_top=settings.batch_top,
            lr_width=settings.lr_width,
            lr_anchor=settings.lr_anchor,
            batch_min=space.batch_min,
            batch_cap=batch_cap,
            lr_min=space.lr_min,
            lr_max=space.lr_max,
            momentum_ref=space.optimizer.momentum,
            batch_round=settings.batch_round,
            lr_search_width=settings.lr_search_width,
            weight=settings.weight,
        )

    @classmethod
    def from_probe(
        cls,
        probe: ProbeResult,
        *,
        family: str,
        adam_alpha: float,
        batch_width: float,
        lr_width: float,
        batch_min: int,
        batch_cap: int,
        lr_min: float,
        lr_max: float,
        momentum_ref: float,
        batch_round: int = 1,
        lr_anchor: float = 0.25,
        lr_search_width: float | None = None,
        weight: float = 3.0,
        batch_top: float = 1.0,
    ) -> Prior:
        """Band just below the probe's B_simple; rule anchored at the large-batch LR ceiling; the search
        over every batch size from ``batch_min`` to ``batch_cap`` and ``lr_search_width`` around the rule."""
        b_noise = probe.b_simple
        if not math.isfinite(b_noise) or b_noise <= 0:
            lower = probe.b_simple_ci[0]
            b_noise = lower if math.isfinite(lower) and lower > 0 else float(batch_cap)
            logger.warning("probe B_simple unresolved (interval %s); centring on %.4g", probe.b_simple_ci, b_noise)
        # The band's top is batch_top·B_noise (default B_noise): at a fixed sample budget a sample at B
        # does 1/(1 + B/B_noise) of the work it does at B -> 0; its bottom is batch_width² lower.
        low, high = _band(b_noise * batch_top / batch_width, batch_width, batch_min, batch_cap, batch_round)
        # The range test finds a stability edge, set by curvature and nearly independent of B
        # while B is small; at a large batch, lr_anchor of it estimates the rate the rule
        # approaches above B_noise. A probe that could not test a larger batch falls back to
        # its own batch size.
        use_large = probe.large_batch > probe.batch_size
        return cls(
            b_noise=b_noise,
            b_ref=probe.large_batch if use_large else probe.batch_size,
            lr_ref=(probe.lr_ceiling_large if use_large else probe.lr_ceiling) * lr_anchor,
            alpha=1.0 if family == "sgd" else adam_alpha,
            batch_low=low,
            batch_high=high,
            lr_width=lr_width,
            lr_min=lr_min,
            lr_max=lr_max,
            momentum_ref=momentum_ref,
            batch_round=batch_round,
            lr_cap=probe.lr_ceiling_large if use_large else None,  # never beyond the measured edge
            search_low=max(1, batch_min),
            search_high=max(batch_min, batch_cap),
            lr_search_width=lr_search_width,
            weight=weight,
        )


def _band(center: float, width: float, floor: int, cap: int, multiple: int) -> tuple[int, int]:
    """[center/width, center*width] inside [floor, cap], keeping its width where it can.

    Example:
        >>> _band(100, 4, 2, 10_000, 1), _band(5_000, 4, 2, 1_000, 1), _band(1, 4, 8, 1_000, 1)
        ((25, 400), (62, 1000), (8, 128))
    """
    cap = max(floor, cap)
    low, high = center / width, center * width
    if high > cap:
        low, high = max(floor, cap / width**2), cap
    if low < floor:
        low, high = floor, min(cap, floor * width**2)
    low_i = max(floor, math.ceil(low / multiple) * multiple if multiple > 1 else round(low))
    high_i = min(cap, int(high // multiple) * multiple if multiple > 1 else round(high))
    return low_i, max(low_i, high_i)
