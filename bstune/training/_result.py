"""What a training run produces: its status, evaluations at sample milestones, noise trajectory."""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bstune.noise import TrajectoryPoint
from bstune.training._config import TrainConfig

__all__ = ["Callback", "Decision", "EvalRecord", "RunStatus", "TrainResult", "keep_progress", "trained_before"]


class RunStatus(str, enum.Enum):
    """How a run ended."""

    COMPLETED = "completed"  # reached max_samples
    DIVERGED = "diverged"  # loss went non-finite; the config is unusable, not broken code
    STOPPED = "stopped"  # a callback asked to stop (e.g. an early-stopping pruner)
    OOM = "oom"  # the device ran out of memory at this batch size


class Decision(str, enum.Enum):
    """What a callback tells the trainer after an evaluation."""

    CONTINUE = "continue"
    STOP = "stop"


@dataclass(frozen=True)
class EvalRecord:
    """Evaluation at one sample milestone.

    ``milestone`` is the nominal sample count (a multiple of ``eval_every``), shared
    by every run of a study whatever its batch size; ``samples`` is the count
    actually processed (at most one batch more). Compare runs at milestones.
    """

    milestone: int
    samples: int
    step: int
    lr: float
    train_loss: float  # eval-mode loss on a fixed training subset
    val_loss: float
    batch_loss: float  # mean training-batch loss since the previous record (train mode)
    metrics: dict[str, float] = field(default_factory=dict)  # "train_<name>" and "val_<name>"
    elapsed_s: float = 0.0  # wall time since the run started
    noise: TrajectoryPoint | None = None

    @property
    def gap(self) -> float:
        """Generalization gap: validation loss minus training loss."""
        return self.val_loss - self.train_loss

    def to_dict(self) -> dict[str, Any]:
        out = {
            "milestone": self.milestone,
            "samples": self.samples,
            "step": self.step,
            "lr": self.lr,
            "train_loss": _num(self.train_loss),
            "val_loss": _num(self.val_loss),
            "batch_loss": _num(self.batch_loss),
            "gap": _num(self.gap),
            "elapsed_s": self.elapsed_s,
            "metrics": {k: _num(v) for k, v in self.metrics.items()},
        }
        out["noise"] = self.noise.to_dict() if self.noise else None
        return out


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass
class TrainResult:
    """The outcome of :func:`bstune.train`."""

    config: TrainConfig
    status: RunStatus
    steps: int
    samples: int
    history: list[EvalRecord]
    wall_time_s: float
    train_time_s: float  # time in training steps only (no evaluation)
    message: str = ""  # why a run ended early
    noise_trajectory: list[TrajectoryPoint] = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False)
    # the optimizer's state_dict at the end (momentum buffers, Adam's moments): another run continues from it
    optimizer_state: dict[str, Any] | None = field(default=None, repr=False)
    # the training set's size, where the run learnt it (a training function's, once its ctx.loader opened)
    n_train: int | None = None
    # the space's searched parameters a completed training function neither read nor had applied (see
    # bstune.training.TrainContext.unread_params): the recommended config's values for them were never used
    unread_params: list[str] = field(default_factory=list)
    # how the loop's own optimizer differed from the space's (the temperature and the LR rule assume the space's)
    other_optimizer: str | None = None

    @property
    def final(self) -> EvalRecord | None:
        """The last evaluation, or ``None`` if the run ended before its first."""
        return self.history[-1] if self.history else None

    @property
    def throughput(self) -> float:
        """Training samples per second (evaluation excluded)."""
        return self.samples / self.train_time_s if self.train_time_s > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "status": self.status.value,
            "steps": self.steps,
            "samples": self.samples,
            "wall_time_s": self.wall_time_s,
            "train_time_s": self.train_time_s,
            "message": self.message,
            "n_train": self.n_train,
            "unread_params": list(self.unread_params),
            "other_optimizer": self.other_optimizer,
            "history": [r.to_dict() for r in self.history],
            "noise_trajectory": [p.to_dict() for p in self.noise_trajectory],
        }


Callback = Callable[[EvalRecord], "Decision | bool | None"]
"""Called after every evaluation; returning ``Decision.STOP`` (or ``True``) ends the run
(status ``stopped``), except at the last milestone, where the run has completed anyway."""


_PROGRESS_ATTR = "_bstune_trained"  # on an exception the user's code raised mid-run: (samples, steps) trained


def keep_progress(exc: BaseException, samples: int, steps: int) -> None:
    """Note on ``exc``, raised by the user's code mid-run, the samples and steps the run had trained, so a study
    counts them (:func:`trained_before`); the exception itself goes on up unchanged."""
    with contextlib.suppress(AttributeError, TypeError):  # an exception type without a __dict__: nothing counted
        setattr(exc, _PROGRESS_ATTR, (int(samples), int(steps)))


def trained_before(exc: BaseException) -> tuple[int, int]:
    """The (samples, steps) a run had trained when its code raised ``exc``; (0, 0) where no run said.

    Example:
        >>> exc = ValueError("boom")
        >>> keep_progress(exc, 960, 30)
        >>> trained_before(exc), trained_before(KeyError("other"))
        ((960, 30), (0, 0))
    """
    kept = getattr(exc, _PROGRESS_ATTR, None)
    return kept if isinstance(kept, tuple) else (0, 0)
