"""The direct measurement's settings and results: plain data (see :mod:`bstune.critical._branching`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bstune.analysis import BatchPoint, CriticalBatchFit
from bstune.errors import ConfigError
from bstune.records import clean_json

__all__ = ["BranchRun", "BranchSettings", "CriticalBatchMeasurement", "SegmentMeasurement"]


@dataclass(frozen=True)
class BranchSettings:
    """How the direct measurement is run; see the module docstring.

    Attributes:
        checkpoints: where segments start, as fractions of the reference's budget; the
            first must be 0 (initialisation) for the whole-run fit to start there.
        seeds: branch seeds per batch size (2 or more: the interval needs the scatter).
        lr_factors: the first rates tried around the rule (the search extends past the
            better end once).
        max_cost: a branch stops after this many times its segment's reference samples.
        checks_per_segment: evaluations per reference segment length (the resolution of the
            samples-to-target count, before interpolation).
        eval_examples: the fixed training subset the loss is measured on; ``None``: the config's
            ``eval_train_examples`` (the subset a study's trials and their targets use).
        tolerance: the tolerance batch size's allowance over the cheapest sample cost.
        target_window: a segment's target is the reference's mean training loss over this
            last fraction of the segment (its evaluations there), not one noisy evaluation.
        reference_chunks: the reference trains in this many chunks of its budget, evaluated and
            kept (a copy of the model and optimizer state in memory) after each; the checkpoints are
            the copies nearest their fractions.
        target_budget_factor: with a ``target_loss``, the reference may run this many times its
            budget to reach it.
        rung_factor: ratio between neighbouring batch sizes of the ladder (a power of two).
        max_rungs: the most batch sizes in the ladder (its middle ones are kept).
        confidence: level of the intervals.
        alpha: the LR rule's exponent; ``None``: 1 for SGD, ``adam_alpha`` for Adam-family.
        adam_alpha: α for Adam-family optimizers when ``alpha`` is None.

    Example:
        >>> BranchSettings(seeds=3).seeds
        3
    """

    checkpoints: tuple[float, ...] = (0.0, 0.125, 0.375)
    seeds: int = 2
    lr_factors: tuple[float, ...] = (1.0, 2.0)
    max_cost: float = 6.0
    checks_per_segment: int = 16
    eval_examples: int | None = None
    tolerance: float = 0.2
    target_window: float = 0.25
    reference_chunks: int = 32
    target_budget_factor: float = 2.0
    rung_factor: int = 4
    max_rungs: int = 5
    confidence: float = 0.9
    alpha: float | None = None
    adam_alpha: float = 0.8

    def __post_init__(self) -> None:
        def bad(name: str, reason: str) -> ConfigError:
            return ConfigError(reason, source="BranchSettings", field=name)

        cps = tuple(self.checkpoints)
        if not cps or cps[0] != 0.0 or any(not 0 <= c < 1 for c in cps) or list(cps) != sorted(set(cps)):
            raise bad("checkpoints", f"must start at 0 and increase strictly within [0, 1), got {list(cps)}")
        if self.seeds < 2:
            raise bad("seeds", f"must be >= 2 (the interval needs the scatter between seeds), got {self.seeds}")
        if not self.lr_factors or any(not (f > 0 and math.isfinite(f)) for f in self.lr_factors):
            raise bad("lr_factors", f"must be positive numbers, got {list(self.lr_factors)}")
        if not self.max_cost > 1:
            raise bad("max_cost", f"must be > 1 (a branch may need more than the reference), got {self.max_cost}")
        if self.checks_per_segment < 2:
            raise bad("checks_per_segment", f"must be >= 2, got {self.checks_per_segment}")
        if self.eval_examples is not None and self.eval_examples < 1:
            raise bad("eval_examples", f"must be positive, got {self.eval_examples}")
        if self.reference_chunks < 4:
            raise bad("reference_chunks", f"must be >= 4, got {self.reference_chunks}")
        if not self.target_budget_factor >= 1:
            raise bad("target_budget_factor", f"must be >= 1, got {self.target_budget_factor}")
        if not 0 < self.target_window <= 1:
            raise bad("target_window", f"must be in (0, 1], got {self.target_window}")
        if not self.tolerance > 0:
            raise bad("tolerance", f"must be positive, got {self.tolerance}")
        if self.rung_factor < 2 or self.rung_factor & (self.rung_factor - 1):
            raise bad("rung_factor", f"must be a power of two >= 2, got {self.rung_factor}")
        if self.max_rungs < 3:
            raise bad("max_rungs", f"must be >= 3 (the fit has two parameters), got {self.max_rungs}")
        if not 0 < self.confidence < 1:
            raise bad("confidence", f"must be in (0, 1), got {self.confidence}")
        if self.alpha is not None and not 0 < self.alpha <= 1.5:
            raise bad("alpha", f"must be in (0, 1.5], got {self.alpha}")


@dataclass(frozen=True)
class BranchRun:
    """One branch: a batch size, a rate and a seed from one checkpoint (``segment``; the number of
    segments for the whole run's branches, from initialisation).

    ``samples`` is the (interpolated) count at which the training loss reached the
    segment's target, or what the branch spent when it did not (``reached`` False).
    """

    segment: int
    batch_size: int
    lr: float
    lr_factor: float
    seed: int
    samples: float
    spent: int
    reached: bool
    status: str

    @property
    def steps(self) -> float:
        return self.samples / self.batch_size


@dataclass(frozen=True)
class SegmentMeasurement:
    """S(B) from one checkpoint to the loss the reference reached at the next.

    Attributes:
        index: segment number from 0.
        start_samples, end_samples: the reference's samples at the segment's ends.
        start_loss, target_loss: the reference's training loss there.
        b_simple, b_simple_ci: B_simple at the segment's start, with its interval.
        points: per batch size and seed, the fewest samples over the rates tried.
        fit: S(B) = S_min(1 + B_crit/B) fitted to those points (None: see ``error``).
        b_tolerance: the largest batch size whose median cost is within the tolerance of
            the cheapest (None when no batch size reached the target at every seed).
    """

    index: int
    start_samples: int
    end_samples: int
    start_loss: float
    target_loss: float
    b_simple: float
    b_simple_ci: tuple[float, float]
    points: list[BatchPoint]
    fit: CriticalBatchFit | None
    b_tolerance: int | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "start_samples": self.start_samples,
            "end_samples": self.end_samples,
            "start_loss": self.start_loss,
            "target_loss": self.target_loss,
            "b_simple": _finite(self.b_simple),
            "b_simple_ci": [_finite(v) for v in self.b_simple_ci],
            "points": [_point(p) for p in self.points],
            "fit": _fit(self.fit),
            "b_tolerance": self.b_tolerance,
            "error": self.error,
        }


@dataclass(frozen=True)
class CriticalBatchMeasurement:
    """The directly measured critical batch size, over training and for the whole run.

    Attributes:
        reference: the reference config: ``batch_size``, ``lr``, ``budget_samples``, ``seed``.
        ladder: the batch sizes branched at.
        segments: one :class:`SegmentMeasurement` per checkpoint (the trajectory).
        whole: the fit to the whole-run branches, from initialisation to the reference's final
            loss (None: see ``whole_error``).
        whole_points: their points, per batch size and seed.
        final_b_simple, final_b_simple_ci: B_simple where the reference ended.
        branches: every branch run.
        cost_samples: every training example the measurement processed (reference, noise
            measurements, branches).
        settings: the :class:`BranchSettings` used.

    Example:
        >>> import torch, bstune
        >>> from bstune.critical import measure_critical_batch, BranchSettings
        >>> x = torch.randn(512, 4); y = x @ torch.ones(4, 1) + 0.5 * torch.randn(512, 1)
        >>> task = bstune.Task(model=lambda: torch.nn.Linear(4, 1), train_data=(x, y),
        ...                    val_data=(x[:64], y[:64]), loss=torch.nn.MSELoss())
        >>> m = measure_critical_batch(task, bstune.TrainConfig(batch_size=8, lr=0.05, max_samples=2048),
        ...                            BranchSettings(checkpoints=(0.0, 0.5)), batch_max=256)
        >>> len(m.segments), m.cost_samples > 2048
        (2, True)
    """

    reference: dict[str, Any]
    ladder: list[int]
    segments: list[SegmentMeasurement]
    whole: CriticalBatchFit | None
    whole_points: list[BatchPoint]
    final_loss: float
    final_b_simple: float
    final_b_simple_ci: tuple[float, float]
    branches: list[BranchRun]
    cost_samples: int
    settings: BranchSettings
    whole_error: str | None = None
    whole_b_tolerance: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def cost_budgets(self) -> float:
        """The cost in units of the reference's budget (one trial's samples)."""
        return self.cost_samples / max(1, int(self.reference["budget_samples"]))

    @property
    def b_crit(self) -> float | None:
        """The whole run's B_crit (None when not fitted)."""
        return self.whole.b_crit if self.whole is not None else None

    @property
    def summary(self) -> str:
        """One paragraph: the whole run's number, how it moves over training, what it cost."""
        pct = f"{100 * self.settings.confidence:g}%"
        if self.whole is not None:
            head = f"measured directly (branches at {self.settings.seeds} seeds): {self.whole.summary}"
        else:
            head = f"the direct measurement gave no whole-run fit: {self.whole_error}"
        parts = [head]
        local = []
        for seg in self.segments:
            where = f"from {seg.start_samples:,} samples"
            if seg.fit is not None and seg.fit.identified:
                lo, hi = seg.fit.b_crit_ci
                local.append(f"{where}: {seg.fit.b_crit:.3g} ({pct} CI {lo:.3g}–{hi:.3g})")
            elif seg.fit is not None:
                local.append(f"{where}: not identified ({'; '.join(seg.fit.unidentified_because())})")
            else:
                local.append(f"{where}: no fit ({seg.error})")
        parts.append("B_crit over training, " + "; ".join(local))
        parts.append(f"cost {self.cost_samples:,} samples ({self.cost_budgets:.1f}x one trial's budget)")
        return ". ".join(parts) + "."

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "branches from checkpoints (Merrill et al. 2025), S(B) fitted as in McCandlish et al. 2018",
            "reference": dict(self.reference),
            "ladder": list(self.ladder),
            "whole": _fit(self.whole),
            "whole_points": [_point(p) for p in self.whole_points],
            "whole_error": self.whole_error,
            "whole_b_tolerance": self.whole_b_tolerance,
            "final_loss": self.final_loss,
            "final_b_simple": _finite(self.final_b_simple),
            "final_b_simple_ci": [_finite(v) for v in self.final_b_simple_ci],
            "segments": [s.to_dict() for s in self.segments],
            "branches": [asdict(b) for b in self.branches],
            "cost_samples": self.cost_samples,
            "cost_budgets": self.cost_budgets,
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.settings).items()},
            "summary": self.summary,
            "notes": list(self.notes),
        }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _point(p: BatchPoint) -> dict[str, Any]:
    return {
        "batch_size": p.batch_size,
        "steps": p.steps,
        "samples": p.samples,
        "lr": p.lr,
        "lower_bound": p.lower_bound,
    }


def _fit(fit: CriticalBatchFit | None) -> dict[str, Any] | None:
    return None if fit is None else dict(clean_json(fit.to_dict()))
