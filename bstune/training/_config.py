"""TrainConfig: one training run, with its budget counted in samples."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from bstune._validate import count_reason, number_reason
from bstune.errors import ConfigError

__all__ = ["SCHEDULES", "TrainConfig"]

SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run.

    Budgets and schedules are in *samples* (training examples processed), not steps,
    so that runs with different batch sizes are compared at equal compute.

    Example:
        >>> cfg = TrainConfig(batch_size=128, lr=0.4, max_samples=200_000)
        >>> cfg.eval_every, cfg.steps
        (20000, 1563)
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
        if self.track_noise and self.batch_size < 2:
            raise bad("track_noise", "needs batch_size >= 2 (two micro-batches per measured step)")

    @property
    def eval_every(self) -> int:
        """Samples between evaluations."""
        return self.eval_every_samples or max(1, self.max_samples // 10)

    @property
    def steps(self) -> int:
        """Optimizer steps the run takes: ceil(max_samples / batch_size)."""
        return -(-self.max_samples // self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "TrainConfig") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown}; known: {sorted(known)}", source=source)
        return cls(**data)
