"""TrainConfig: one training run, with its budget counted in samples."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from bstune._validate import count_reason, number_reason
from bstune.errors import ConfigError

__all__ = ["SCHEDULES", "Stage", "TrainConfig"]

SCHEDULES = ("constant", "cosine", "linear")

Stage = tuple[int, int, float]
"""One stage of a batch-size schedule: ``(start_samples, batch_size, lr)``."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run.

    Budgets and schedules are in *samples* (training examples processed), not steps,
    so that runs with different batch sizes are compared at equal compute.

    ``batch_schedule`` makes the batch size grow during the run (a batch-size warmup):
    stages ``(start_samples, batch_size, lr)``, the first at 0, starts strictly
    increasing and below ``max_samples``. A step that starts after ``s`` samples
    belongs to the last stage whose start is ``<= s`` and holds exactly that stage's
    batch; a stage's last step may run past the next start, which then begins one step
    later. The stage's ``lr`` is the base rate that ``warmup_samples`` and ``schedule``
    multiply (:func:`~bstune.training.lr_at`). ``batch_size`` and ``lr`` must equal the
    first stage's (they are the rate and batch the run starts with, and what a study
    records); :func:`~bstune.analysis.recommend_batch_schedule` builds such a config.
    ``micro_batch_size`` must fit the smallest stage, the noise tracker starts a new window
    at each change of batch size, the divergence check keeps the first step's loss as its
    reference, and data-parallel runs refuse a schedule.
    JSON turns the stages into lists; ``from_dict`` turns them back into tuples.

    Example:
        >>> cfg = TrainConfig(batch_size=128, lr=0.4, max_samples=200_000)
        >>> cfg.eval_every, cfg.steps
        (20000, 1563)
        >>> grown = TrainConfig(batch_size=32, lr=0.1, max_samples=1000, batch_schedule=((0, 32, 0.1), (500, 64, 0.2)))
        >>> grown.steps, grown.batch_sizes
        (24, (32, 64))
    """

    batch_size: int
    lr: float
    max_samples: int
    momentum: float | None = None  # None: the task's optimizer setting
    weight_decay: float | None = None  # None: the task's optimizer setting
    warmup_samples: int = 0  # linear warmup from 0 to lr over this many samples (Goyal et al. 2017)
    schedule: Literal["constant", "cosine", "linear"] = "constant"  # decay after warmup
    final_lr_ratio: float = 0.0  # lr at the end of a cosine/linear decay, relative to lr
    eval_every_samples: int | None = None  # None: ten evaluations per run
    eval_at_start: bool = False  # also evaluate the initial model (milestone 0)
    eval_train_examples: int = 2048  # fixed training subset measured for train loss / gap
    eval_batch_size: int = 1024  # batch size of evaluation passes (memory only)
    grad_clip: float | None = None  # clip the global gradient norm to this value
    seed: int = 0  # model init and data order
    device: str = "auto"  # "auto": CUDA when available, else CPU
    micro_batch_size: int | None = None  # gradient accumulation: examples per forward/backward
    amp: bool = False  # mixed precision autocast
    amp_dtype: Literal["float16", "bfloat16"] | None = (
        None  # None: float16 on CUDA, bfloat16 on CPU; float16 uses loss scaling
    )
    track_noise: bool = False  # B_simple trajectory: per-example norms from hooks, else micro-batch gradients
    noise_every_steps: int = 8  # measure B_simple on every Nth step (benchmarks/results/noise_overhead.md)
    noise_preconditioned: bool = False  # Adam-family: measure gradients divided by sqrt(v_hat)
    divergence_factor: float | None = 100.0  # diverged when a batch loss exceeds this times the first one
    deterministic: bool = False  # torch.use_deterministic_algorithms during the run (slower on CUDA)
    num_workers: int = 0  # DataLoader worker processes for a generic dataset's training batches; 0: in-process
    pin_memory: bool | None = None  # None: pin the workers' batches when training on CUDA
    prefetch_factor: int | None = None  # batches each worker loads ahead; None: torch's default (2)
    batch_schedule: tuple[Stage, ...] | None = None  # (start_samples, batch_size, lr) stages; None: one batch size

    def __post_init__(self) -> None:
        def bad(name: str, reason: str) -> ConfigError:
            return ConfigError(reason, source="TrainConfig", field=name)

        for name in ("batch_size", "max_samples"):
            if (reason := count_reason(getattr(self, name))) is not None:
                raise bad(name, reason)
        if (reason := number_reason(self.lr)) is not None:
            raise bad("lr", reason)
        if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
            raise bad("momentum", f"must be in [0, 1), got {self.momentum}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise bad("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.warmup_samples < 0 or self.warmup_samples > self.max_samples:
            raise bad("warmup_samples", f"must be in [0, max_samples={self.max_samples}], got {self.warmup_samples}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0.0 <= self.final_lr_ratio <= 1.0:
            raise bad("final_lr_ratio", f"must be in [0, 1], got {self.final_lr_ratio}")
        if self.eval_every_samples is not None and self.eval_every_samples <= 0:
            raise bad("eval_every_samples", f"must be positive, got {self.eval_every_samples}")
        for name in ("eval_train_examples", "eval_batch_size", "noise_every_steps"):
            if getattr(self, name) <= 0:
                raise bad(name, f"must be positive, got {getattr(self, name)}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise bad("grad_clip", f"must be positive, got {self.grad_clip}")
        if self.micro_batch_size is not None and not 1 <= self.micro_batch_size <= self.batch_size:
            raise bad("micro_batch_size", f"must be in [1, batch_size={self.batch_size}], got {self.micro_batch_size}")
        if self.divergence_factor is not None and not self.divergence_factor > 1:
            raise bad(
                "divergence_factor",
                f"must be > 1 (or None to stop only on non-finite loss), got {self.divergence_factor}",
            )
        if self.amp_dtype not in (None, "float16", "bfloat16"):
            raise bad("amp_dtype", f"must be 'float16' or 'bfloat16', got {self.amp_dtype!r}")
        if (reason := count_reason(self.num_workers, minimum=0)) is not None:
            raise bad("num_workers", reason)
        if self.pin_memory is not None and not isinstance(self.pin_memory, bool):
            raise bad("pin_memory", f"must be true, false or None (on when training on CUDA), got {self.pin_memory!r}")
        if self.prefetch_factor is not None:
            pf = self.prefetch_factor
            if (reason := count_reason(pf)) is not None:
                raise bad("prefetch_factor", f"{reason} (or None)")
            if self.num_workers == 0:
                raise bad("prefetch_factor", f"needs num_workers > 0 (workers prefetch), got {pf!r} with num_workers=0")
        self._check_schedule(bad)
        if self.track_noise and min(self.batch_sizes) < 2:
            raise bad("track_noise", "needs batch_size >= 2 (two micro-batches per measured step)")

    def _check_schedule(self, bad: Any) -> None:
        """Validate ``batch_schedule`` and store it as a tuple of ``(int, int, float)`` (JSON gives lists)."""
        raw = self.batch_schedule
        if raw is None:
            return
        if isinstance(raw, str | bytes) or not hasattr(raw, "__iter__"):
            raise bad("batch_schedule", f"must be a sequence of (start_samples, batch_size, lr) stages, got {raw!r}")
        stages: list[Stage] = []
        for i, stage in enumerate(raw):
            if isinstance(stage, str | bytes) or not hasattr(stage, "__len__") or len(stage) != 3:
                raise bad("batch_schedule", f"stage {i} must be (start_samples, batch_size, lr), got {stage!r}")
            start, batch, lr = stage
            if (reason := count_reason(start, minimum=0, numpy=True)) is not None:
                raise bad("batch_schedule", f"stage {i}: start_samples {reason}")
            if (reason := count_reason(batch, numpy=True)) is not None:
                raise bad("batch_schedule", f"stage {i}: batch_size {reason}")
            if (reason := number_reason(lr)) is not None:
                raise bad("batch_schedule", f"stage {i}: lr {reason}")
            stages.append((int(start), int(batch), float(lr)))
        if not stages:
            raise bad("batch_schedule", "must hold at least one stage (or be None for one batch size)")
        if stages[0][0] != 0:
            raise bad("batch_schedule", f"the first stage must start at 0 samples, got {stages[0][0]}")
        for (prev, _, _), (start, _, _) in itertools.pairwise(stages):
            if start <= prev:
                raise bad("batch_schedule", f"stage starts must increase strictly, got {start} after {prev}")
        if stages[-1][0] >= self.max_samples:
            raise bad(
                "batch_schedule", f"every stage must start below max_samples={self.max_samples}, got {stages[-1][0]}"
            )
        _, first_batch, first_lr = stages[0]
        if self.batch_size != first_batch or self.lr != first_lr:
            raise bad(
                "batch_schedule",
                f"batch_size and lr ({self.batch_size}, {self.lr:g}) must equal the first stage's "
                f"({first_batch}, {first_lr:g})",
            )
        micro = self.micro_batch_size
        if micro is not None and micro > min(b for _, b, _ in stages):
            raise bad(
                "micro_batch_size",
                f"must be at most every stage's batch size (smallest {min(b for _, b, _ in stages)}), got {micro}",
            )
        object.__setattr__(self, "batch_schedule", tuple(stages))

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batch size of each stage (one, without a ``batch_schedule``)."""
        if self.batch_schedule is None:
            return (self.batch_size,)
        return tuple(b for _, b, _ in self.batch_schedule)

    @property
    def eval_every(self) -> int:
        """Samples between evaluations."""
        return self.eval_every_samples or max(1, self.max_samples // 10)

    @property
    def steps(self) -> int:
        """Optimizer steps the run takes: ceil(max_samples / batch_size), summed over the stages of a schedule."""
        if self.batch_schedule is None:
            return -(-self.max_samples // self.batch_size)
        samples = steps = 0
        ends = [start for start, _, _ in self.batch_schedule[1:]] + [self.max_samples]
        for (_, batch, _), end in zip(self.batch_schedule, ends, strict=True):
            if samples < end:  # a stage the previous one's last step ran past takes no step
                n = -(-(end - samples) // batch)
                steps, samples = steps + n, samples + n * batch
        return steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "TrainConfig") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown}; known: {sorted(known)}", source=source)
        return cls(**data)
