"""Optimizer families bstune tunes, and the SGD temperature each one implies.

The temperature T = η/B is what sets the scale of SGD's noise (Smith & Le 2018);
with heavy-ball momentum m the effective step is η/(1−m), so T = η/(B(1−m))
(McCandlish et al. 2018, App. C). For Adam the per-coordinate preconditioning
changes the picture; Adam has no heavy-ball momentum (m = 0), so its T is η/B, still
reported so runs can be compared. Reports label T "effective temperature η/(B(1−m))".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from bstune.errors import ConfigError

__all__ = ["FAMILIES", "OptimizerSpec", "temperature", "warn_on_other_optimizer"]

logger = logging.getLogger(__name__)

Family = Literal["sgd", "adam", "adamw"]
FAMILIES: tuple[str, ...] = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer family and the settings the search keeps fixed.

    ``lr`` is not here: it is what the search sets. ``momentum`` and
    ``weight_decay`` are defaults that a :class:`~bstune.TrainConfig` may override.

    Example:
        >>> spec = OptimizerSpec("sgd", momentum=0.9)
        >>> opt = spec.build(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> type(opt).__name__, opt.param_groups[0]["momentum"]
        ('SGD', 0.9)
    """

    family: Family = "sgd"
    momentum: float = 0.0  # SGD heavy-ball momentum; 0 is plain SGD
    nesterov: bool = False
    weight_decay: float = 0.0  # L2 for SGD/Adam, decoupled for AdamW
    betas: tuple[float, float] = (0.9, 0.999)  # Adam-family moment decay rates
    eps: float = 1e-8  # Adam-family denominator floor

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(
                f"unknown optimizer {self.family!r}; expected one of {', '.join(FAMILIES)}",
                source="OptimizerSpec",
                field="family",
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.momentum}", source="OptimizerSpec", field="momentum")
        if self.momentum and self.family != "sgd":
            raise ConfigError(
                f"momentum applies to 'sgd' only; for {self.family!r} set betas",
                source="OptimizerSpec",
                field="momentum",
            )
        if self.nesterov and (self.family != "sgd" or self.momentum == 0.0):
            raise ConfigError("nesterov needs family='sgd' and momentum > 0", source="OptimizerSpec", field="nesterov")
        if self.weight_decay < 0.0:
            raise ConfigError(f"must be >= 0, got {self.weight_decay}", source="OptimizerSpec", field="weight_decay")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"must be two numbers in [0, 1), got {self.betas}", source="OptimizerSpec", field="betas")
        if self.eps <= 0.0:
            raise ConfigError(f"must be > 0, got {self.eps}", source="OptimizerSpec", field="eps")

    @classmethod
    def coerce(cls, value: OptimizerSpec | str) -> OptimizerSpec:
        """Accept a spec or a family name (``"sgd"``, ``"adam"``, ``"adamw"``)."""
        if isinstance(value, OptimizerSpec):
            return value
        if isinstance(value, str):
            return cls(family=value.lower())  # type: ignore[arg-type]
        raise ConfigError(
            f"expected an OptimizerSpec or one of {', '.join(FAMILIES)}, got {type(value).__name__}",
            source="Task",
            field="optimizer",
        )

    def build(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        *,
        momentum: float | None = None,
        weight_decay: float | None = None,
    ) -> torch.optim.Optimizer:
        """Create the torch optimizer; ``momentum``/``weight_decay`` override the spec's."""
        m = self.momentum if momentum is None else momentum
        wd = self.weight_decay if weight_decay is None else weight_decay
        if self.family == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=m, weight_decay=wd, nesterov=self.nesterov and m > 0)
        if m:
            raise ConfigError(
                f"momentum applies to 'sgd' only, not {self.family!r}", source="TrainConfig", field="momentum"
            )
        cls = torch.optim.Adam if self.family == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=self.betas, eps=self.eps, weight_decay=wd)


def temperature(lr: float, batch_size: int, momentum: float = 0.0) -> float:
    """SGD temperature T = η / (B (1 − m)).

    Example:
        >>> round(temperature(0.1, 32, momentum=0.9), 6)
        0.03125
    """
    if batch_size <= 0:
        raise ConfigError(f"must be positive, got {batch_size}", source="temperature", field="batch_size")
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"must be in [0, 1), got {momentum}", source="temperature", field="momentum")
    return lr / (batch_size * (1.0 - momentum))


_TORCH_FAMILIES: dict[type[torch.optim.Optimizer], str] = {
    torch.optim.SGD: "sgd",
    torch.optim.Adam: "adam",
    torch.optim.AdamW: "adamw",
}
_warned_optimizers: set[str] = set()  # each mismatch is said once per process, not once per trial


def other_optimizer(
    optimizer: torch.optim.Optimizer, family: str, momentum: float, betas: Sequence[float] | None = None
) -> str | None:
    """How the loop's optimizer differs from the space's (family, SGD momentum, Adam-family ``betas``), or None.

    Only the optimizers whose family is known are checked (a custom one is the user's to declare).

    Example:
        >>> import torch
        >>> sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
        >>> other_optimizer(sgd, "sgd", 0.0)
        "the loop's SGD has momentum 0.9, but the search space declares 0"
    """
    mine = _TORCH_FAMILIES.get(type(optimizer))
    if mine is None:
        return None
    said = ""
    if mine != family:
        said = (
            f"the loop's optimizer is {type(optimizer).__name__}, but the search space declares optimizer family "
            f"{family!r}"
        )
    elif family == "sgd":
        theirs = float(optimizer.param_groups[0].get("momentum", 0.0))
        if not math.isclose(theirs, momentum, abs_tol=1e-9):
            said = f"the loop's SGD has momentum {theirs:g}, but the search space declares {momentum:g}"
    elif betas is not None and "betas" in optimizer.param_groups[0]:
        # β₂ sets the second moment's memory, and with it how the rate must grow with B (the rule's exponent)
        theirs_betas = tuple(float(b) for b in optimizer.param_groups[0]["betas"])
        if not all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(theirs_betas, betas, strict=True)):
            said = (
                f"the loop's {type(optimizer).__name__} has betas ({', '.join(f'{b:g}' for b in theirs_betas)}), but "
                f"the search space declares ({', '.join(f'{float(b):g}' for b in betas)})"
            )
    return said or None


def warn_on_other_optimizer(
    optimizer: torch.optim.Optimizer, family: str, momentum: float, betas: Sequence[float] | None = None
) -> str | None:
    """Warn when the loop's optimizer is not the space's: the temperature and the LR rule assume the space's.

    Returns how it differs (:func:`other_optimizer`), which the trial's record keeps for the report.
    """
    said = other_optimizer(optimizer, family, momentum, betas)
    if said and said not in _warned_optimizers:
        _warned_optimizers.add(said)
        logger.warning(
            "%s: the effective temperature, the LR rule and the report assume the space's optimizer; declare "
            "the one the loop uses under the space's optimizer: (family, momentum, betas), or build it with "
            "ctx.make_optimizer(params) or from ctx.config",
            said,
        )
    return said
