"""The learning-rate table: η for other batch sizes, from the best trial and B_crit.

McCandlish et al. 2018 (eq. 2.6): the best SGD step at batch B is
ε_opt(B) = ε_max / (1 + B_noise/B) ∝ s(B) with s(B) = 1/(1/B + 1/B_noise), linear
in B well below the noise scale and flat above (Goyal et al.'s linear scaling rule,
and its limit). The trials measure B_crit, the noise scale that matters for steps to
the target, so the table uses it in place of the probe's B_simple, anchored at the
best trial:

    η(B) = η_best · (s(B) / s(B_best))^α,   α = 1 for SGD, α ∈ [0.5, 1] for Adam/AdamW

(Adam's rate grows more slowly: α = 0.5 is the square-root rule of Malladi et al.
2022). It is the rule the prior searched along (:class:`bstune.study.Prior`), now with
the measured B_crit. Far outside the batch sizes tried it is an extrapolation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from bstune.analysis._critical import CriticalBatchFit
from bstune.errors import ConfigError
from bstune.optim import FAMILIES

__all__ = ["lr_table"]


def lr_table(
    fit_or_bcrit: CriticalBatchFit | float,
    best_batch: int,
    best_lr: float,
    batch_sizes: Iterable[int],
    family: str = "sgd",
    alpha: float = 1.0,
) -> list[tuple[int, float]]:
    """``[(B, η(B))]`` for each of ``batch_sizes``, by the rule in the module docstring.

    ``b_crit = inf`` gives pure linear scaling, ``b_crit = 0`` a constant rate.

    Example:
        >>> [(b, round(lr, 4)) for b, lr in lr_table(256.0, 64, 0.1, [32, 64, 256, 4096])]
        [(32, 0.0556), (64, 0.1), (256, 0.25), (4096, 0.4706)]
    """
    b_crit = fit_or_bcrit.b_crit if isinstance(fit_or_bcrit, CriticalBatchFit) else float(fit_or_bcrit)

    def bad(name: str, reason: str) -> ConfigError:
        return ConfigError(reason, source="lr_table", field=name)

    if math.isnan(b_crit) or b_crit < 0:
        raise bad("fit_or_bcrit", f"B_crit must be >= 0 (inf allowed), got {b_crit}")
    if family not in FAMILIES:
        raise bad("family", f"must be one of {', '.join(FAMILIES)}, got {family!r}")
    if family == "sgd" and alpha != 1.0:
        raise bad("alpha", f"applies to the Adam family; SGD's rule is linear (alpha=1), got {alpha}")
    if not 0 < alpha <= 1:
        raise bad("alpha", f"must be in (0, 1], got {alpha}")
    if best_batch <= 0 or not (math.isfinite(best_lr) and best_lr > 0):
        raise bad("best_batch", f"best_batch and best_lr must be positive, got {best_batch}, {best_lr}")

    def s(b: float) -> float:  # 1/(1/B + 1/B_crit); the scale cancels in the ratio when B_crit = 0
        return b if math.isinf(b_crit) else 1.0 / (1.0 / b + 1.0 / b_crit) if b_crit > 0 else 1.0

    table = []
    for b in batch_sizes:
        if b <= 0:
            raise bad("batch_sizes", f"must be positive, got {b}")
        table.append((int(b), best_lr * (s(b) / s(best_batch)) ** alpha))
    return table
