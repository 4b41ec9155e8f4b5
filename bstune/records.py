"""Records: what a study keeps about its trials and its probe, as plain data.

The bottom layer of the study's data: it imports neither Optuna nor the analysis nor
the report, so ``result.json`` can be read, analysed and reported on without them. The
study layer builds these records (from Optuna's trials or Ray's results); the analysis
and the report read them (the report reads a finished study through :class:`StudyData`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Protocol

from bstune.metrics import Direction

__all__ = [
    "ProbeResult",
    "Rescored",
    "StudyData",
    "TrialRecord",
    "TrialStatus",
    "clean_dict",
    "clean_json",
    "last_value",
    "rank_key",
]


class TrialStatus(str, Enum):
    """How a trial ended (or where it stands), as stores and ``result.json`` keep it.

    A ``str`` enum: a member equals, formats as, and is stored in JSON as its plain
    string, so results written before the enum existed read the same. A training run's
    :class:`bstune.RunStatus` maps onto it in one place (the study's trial runner):
    a run a pruner stopped is ``PRUNED``, the others keep their name.

    Example:
        >>> TrialStatus("pruned") == TrialStatus.PRUNED, TrialStatus.OOM == "oom", f"{TrialStatus.FAILED}"
        (True, True, 'failed')
    """

    COMPLETED = "completed"  # trained to its budget and recorded a finite objective
    PRUNED = "pruned"  # stopped early by the pruner (or Ray's scheduler)
    DIVERGED = "diverged"  # the loss went non-finite: the configuration is unusable
    OOM = "oom"  # the device ran out of memory at this batch size
    FAILED = "failed"  # the task's code raised, the worker died, or no finite objective was recorded
    INTERRUPTED = "interrupted"  # abandoned by a crashed or Ctrl-C'd process; a resumed study runs it again
    RUNNING = "running"  # an Optuna trial still running (read from a live store)
    WAITING = "waiting"  # an Optuna trial enqueued, not started

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        """Ran to its end, as a study counts toward its trials: not cut short (its config ran again), queued or
        running. ``TrialStatus("waiting").finished`` is False."""
        return self not in (TrialStatus.INTERRUPTED, TrialStatus.RUNNING, TrialStatus.WAITING)


def last_value(history: Sequence[Mapping[str, Any]], objective: str) -> float | None:
    """The objective at a run's last evaluation (None where it recorded none, or not a finite one).

    Example:
        >>> last_value([{"val_loss": 0.3}, {"val_loss": 0.35}], "val_loss"), last_value([], "val_loss")
        (0.35, None)
    """
    value = history[-1].get(objective) if history else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def clean_dict(value: dict[str, Any]) -> dict[str, Any]:
    """:func:`clean_json` of a dict, typed as one."""
    out: dict[str, Any] = clean_json(value)
    return out


def clean_json(value: Any) -> Any:
    """Replace non-finite floats by ``None`` (JSON has no inf/nan) and enum members by their plain values."""
    if isinstance(value, Enum):
        return clean_json(value.value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def rank_key(trial: dict[str, Any], sign: float) -> tuple[int, float]:
    """Where a trial (as result.json or report.json holds it) stands in a best-first list: completed trials
    by value, then pruned ones by the value they had when stopped (an early value is no final one, so it
    never outranks a completed trial's), then the rest. ``sign``: +1 to minimize, -1 to maximize.

    Example:
        >>> rows = [{"status": "pruned", "value": 0.2}, {"status": "completed", "value": 0.25},
        ...         {"status": "failed", "value": None}]
        >>> [r["status"] for r in sorted(rows, key=lambda r: rank_key(r, +1))]
        ['completed', 'pruned', 'failed']
    """
    value = trial.get("value")
    if value is None:
        return 2, 0.0
    return (0 if trial.get("status") == TrialStatus.COMPLETED else 1), sign * float(value)


@dataclass(frozen=True)
class TrialRecord:
    """One trial: its derived batch size and learning rate, outcome and learning curve."""

    number: int
    status: TrialStatus  # a plain string (from JSON, or older code) is read as its member
    batch_size: int | None
    lr: float | None
    temperature: float | None  # eta/(B(1-m))
    value: float | None  # the objective (best validation loss over its milestones, by default)
    samples: int  # training samples the trial used
    params: dict[str, Any]  # the sampled coordinates and extra hyperparameters
    config: dict[str, Any]  # the full TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    worker: str | None = None  # where it ran: a Ray node id, a trial worker ("worker 1 (cuda:1)"), else None
    batch_ceiling: int | None = None  # out of memory: the batch-size cap for the rest of the study
    traceback: str | None = None  # failed: where the task's code raised
    from_probe: bool = False  # the probe's trial-long run, recorded as a trial (its samples are the trial's)
    n_train: int | None = None  # the training set's size, where the run learnt it (what a loop's ctx.loader held)
    # searched parameters a training function neither read nor had applied: its config's values for them were
    # never used
    unread_params: list[str] = field(default_factory=list)
    # how the loop's own optimizer differed from the space's: the trial's temperature assumes the space's
    other_optimizer: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", TrialStatus(self.status))

    def to_dict(self) -> dict[str, Any]:
        return clean_dict(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        return cls(**data)


@dataclass(frozen=True)
class Rescored:
    """One candidate's values: its own trial's first, then one per re-scoring seed (None: it did not complete).

    A value is a run's best objective over its evaluations, as trials are compared; ``finals``
    (in the same order) is each run's objective at its last evaluation, what training the
    config to its budget gives without keeping the best checkpoint (empty in results
    written before it was kept).
    """

    trial: int
    seeds: list[int]
    values: list[float | None]
    samples: int  # spent on the re-scoring runs (the trial's own samples are counted with the trial)
    finals: list[float | None] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(v is not None and math.isfinite(v) for v in self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(v for v in self.values if v is not None) if self.complete else None

    @property
    def sem(self) -> float | None:
        """Standard error of the mean over the seeds (None with fewer than two values)."""
        if not self.complete or len(self.values) < 2:
            return None
        return statistics.stdev(v for v in self.values if v is not None) / math.sqrt(len(self.values))

    @property
    def fresh_mean(self) -> float | None:
        """The mean over the re-scoring seeds alone: the own seed's value is the draw the trial was picked on, so
        the mean over every seed leans optimistic (the winner's curse); this one less so (where several candidates
        were re-scored, the choice among them used these seeds too, so it is not free of the pick either)."""
        fresh = self.values[1:]
        return statistics.fmean(v for v in fresh if v is not None) if self.complete and fresh else None

    @property
    def fresh_sem(self) -> float | None:
        """Standard error of :attr:`fresh_mean` (None with fewer than two re-scoring seeds)."""
        fresh = self.values[1:]
        if not self.complete or len(fresh) < 2:
            return None
        return statistics.stdev(v for v in fresh if v is not None) / math.sqrt(len(fresh))

    @property
    def final_mean(self) -> float | None:
        """The mean over the seeds of the last evaluation's objective (None unless every run has one)."""
        if not self.finals or len(self.finals) != len(self.values):
            return None
        if not all(v is not None and math.isfinite(v) for v in self.finals):
            return None
        return statistics.fmean(v for v in self.finals if v is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "seeds": list(self.seeds),
            "values": list(self.values),
            "samples": self.samples,
            "mean": self.mean,
            "sem": self.sem,
            "fresh_mean": self.fresh_mean,  # over the re-scoring seeds alone: less optimistic than the mean
            "fresh_sem": self.fresh_sem,
            "finals": list(self.finals),
            "final_mean": self.final_mean,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rescored:
        return cls(
            trial=int(data["trial"]),
            seeds=[int(s) for s in data["seeds"]],
            values=[None if v is None else float(v) for v in data["values"]],
            samples=int(data["samples"]),
            finals=[None if v is None else float(v) for v in data.get("finals", [])],
        )


@dataclass
class ProbeResult:
    """What the probe measured. JSON round-trips, so a resumed study need not probe again."""

    batch_size: int
    lr_ceiling: float  # largest range-test lr before the loss rose past twice its best
    lr_ceiling_large: float  # the same at a large batch (large_batch): bounds the rule's flat part
    large_batch: int
    lr_probe: float  # lr of the probe run
    b_simple: float
    b_simple_ci: tuple[float, float]
    trajectory: list[dict[str, Any]]  # B_simple over the probe run: samples, b_simple, ci, temperature
    temperature: float  # eta/(B(1-m)) of the probe run
    throughput: dict[int, float]  # batch size -> training samples/s on the trial device
    batch_ceiling: int | None  # smallest batch size that ran out of memory, halved; None if all fit
    samples_used: int  # training examples processed by the probe (range test + run + measurement + ladder)
    lr_range: list[tuple[float, float]] = field(default_factory=list)  # (lr, smoothed loss) of the range test
    device: str = "cpu"
    seconds: float = 0.0
    # batch size -> (q25, q75) of the per-step rates behind ``throughput`` (the median); empty in older results
    throughput_iqr: dict[int, tuple[float, float]] = field(default_factory=dict)
    # The probe's training run (B_simple's run) when it was one trial long: a study that told the probe its
    # trial budget may count it as a trial. Plain data, as a trial keeps its run: batch_size, lr, seed,
    # samples, steps, status (a TrialStatus value), message, throughput (samples/s, noise tracking on),
    # history (one row per milestone, as bstune.study._trial.history_row writes it: milestone, samples,
    # step, lr, train_loss, val_loss, gap and the task's metrics), config (the TrainConfig as a dict) and
    # samples_before (what the probe spent before the run: the LR range test at its batch, twice for a
    # training function whose training set proved small; the rest came after).
    # None: no budget was given, a training function's probe whose run was shorter than a trial or whose
    # loop last evaluated after the still phase (bstune/study/_probe_function.py), and in older results.
    run: dict[str, Any] | None = None
    # B_simple's interval at the measured parameters only (sampling noise); ``b_simple_ci`` is it widened by
    # the log-scale spread of the run's trajectory near them (``b_simple_seed_spread``), what another seed
    # would see. None in older results, whose ``b_simple_ci`` is the sampling interval.
    b_simple_sampling_ci: tuple[float, float] | None = None
    b_simple_seed_spread: float | None = None
    b_simple_at_samples: int | None = None  # the probe run's samples where B_simple was measured
    # The curvature-aware B_noise = tr(HΣ)/(GᵀHG) at the same parameters (None: not measured; inf: GᵀHG not
    # resolved above zero) and its interval; ``curvature`` is bstune.noise.CurvatureNoiseEstimate.to_dict()
    # (with b_simple of the same examples), or {"skipped": reason}. None in older results.
    b_noise: float | None = None
    b_noise_ci: tuple[float, float] | None = None
    curvature: dict[str, Any] | None = None
    # the training set's size: a task's, or what a training function's ctx.loader held (None: not known)
    n_train: int | None = None
    # the range test (at batch_size; at large_batch) reached the space's lr.max with the loss still under
    # twice its best: its ceiling is lr.max, a lower bound of the true one (False in older results)
    lr_ceiling_at_max: bool = False
    lr_ceiling_large_at_max: bool = False
    # B_simple measured from micro-batches of this size, for a model with BatchNorm in train mode (whose
    # per-example gradients are not defined): the value includes BatchNorm's micro-batch statistics and
    # depends on the size. None: per-example gradients (and in older results).
    b_simple_micro_batch: int | None = None

    def search_cap(self, cap: int) -> int:
        """The largest batch a search may draw after this probe: ``cap``, at most what fit in memory
        (``batch_ceiling``) and the training set the probe saw (``n_train``, a training function's)."""
        return min(cap, self.batch_ceiling or cap, self.n_train or cap)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["throughput"] = {str(k): v for k, v in self.throughput.items()}
        out["throughput_iqr"] = {str(k): list(v) for k, v in self.throughput_iqr.items()}
        out["b_simple"] = self.b_simple if math.isfinite(self.b_simple) else None
        out["b_simple_ci"] = [v if math.isfinite(v) else None for v in self.b_simple_ci]
        for key in ("b_simple_sampling_ci", "b_noise_ci"):
            ci = getattr(self, key)
            out[key] = None if ci is None else [v if math.isfinite(v) else None for v in ci]
        if self.b_noise is not None and not math.isfinite(self.b_noise):
            out["b_noise"] = None  # "curvature" says it was measured
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        d = dict(data)
        d["throughput"] = {int(k): float(v) for k, v in d["throughput"].items()}
        d["throughput_iqr"] = {int(k): (float(v[0]), float(v[1])) for k, v in d.get("throughput_iqr", {}).items()}
        d["b_simple"] = math.inf if d["b_simple"] is None else d["b_simple"]
        d["b_simple_ci"] = tuple(math.inf if v is None else v for v in d["b_simple_ci"])
        d["lr_range"] = [tuple(p) for p in d.get("lr_range", [])]
        for key in ("b_simple_sampling_ci", "b_noise_ci"):
            if d.get(key) is not None:
                d[key] = tuple(math.inf if v is None else v for v in d[key])
        measured = isinstance(d.get("curvature"), dict) and "b_noise" in d["curvature"]
        if d.get("b_noise") is None and measured:
            d["b_noise"] = math.inf
        return cls(**d)


class StudyData(Protocol):
    """What the report reads of a finished study (:class:`bstune.study.StudyResult` is one)."""

    study_name: str
    mode: str
    objective: str
    direction: str
    best_config: dict[str, Any]
    best_value: float
    trials: list[TrialRecord]
    probe: ProbeResult | None
    budget_samples: int
    samples_probe: int
    best_trial: int | None
    rescored: list[Rescored]
    directions: dict[str, str]

    def metric_directions(self) -> dict[str, Direction]:
        """Each recorded quantity whose direction is known, with it."""
        ...

    def direction_of(
        self, metric: str, *, source: str = ..., field: str | None = ..., given: Direction | str | None = ...
    ) -> Direction:
        """Whether ``metric`` is minimized or maximized; a ``ConfigError`` if the study did not record it."""
        ...

    @property
    def samples_rescore(self) -> int: ...
    @property
    def samples_total(self) -> int: ...
