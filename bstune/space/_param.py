"""One searched hyperparameter besides B and lr: its domain, its checks, and the names a space may search."""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from bstune._validate import is_int, is_number
from bstune.errors import ConfigError
from bstune.training import SCHEDULES

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

__all__ = ["KINDS", "KNOWN_PARAMS", "MODEL_PREFIX", "ParamSpec"]

Kind = Literal["float", "int", "categorical"]
KINDS: tuple[str, ...] = ("float", "int", "categorical")


@dataclass(frozen=True)
class _Range:
    """An interval a known parameter's values must lie in; ``high=None`` is unbounded."""

    low: float
    high: float | None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: object) -> bool:
        if not is_number(x, numpy=True):
            return False
        v = float(x)
        above = v > self.low if self.low_open else v >= self.low
        below = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return above and below

    def __str__(self) -> str:
        high = "∞)" if self.high is None else f"{self.high:g}{')' if self.high_open else ']'}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {high}"


# The TrainConfig settings a space may search, the kinds each allows and its valid values.
# ``warmup_fraction`` is warmup as a fraction of the run's sample budget.
KNOWN_PARAMS: dict[str, tuple[tuple[str, ...], _Range | tuple[str, ...]]] = {
    "momentum": (("float", "categorical"), _Range(0.0, 1.0, high_open=True)),
    "weight_decay": (("float", "categorical"), _Range(0.0, None)),
    "warmup_fraction": (("float", "categorical"), _Range(0.0, 0.5)),
    "schedule": (("categorical",), SCHEDULES),
    "final_lr_ratio": (("float", "categorical"), _Range(0.0, 1.0)),
    "grad_clip": (("float", "categorical"), _Range(0.0, None, low_open=True)),
}
MODEL_PREFIX = "model."
_T = TypeVar("_T")
_Bad = Callable[[str | None, str], ConfigError]  # (key, reason) -> the error to raise


_REPR = reprlib.Repr()  # bounded: YAML anchors can build huge (or self-referencing) nests cheaply
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def _show(value: object) -> str:
    """``str 'abc'``: a value and its type, short enough for one message line."""
    try:
        text = _REPR.repr(value)
    except Exception:  # e.g. an int too long to print (sys.set_int_max_str_digits)
        text = "<unprintable>"
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


@dataclass(frozen=True)
class ParamSpec:
    """One extra hyperparameter to search (batch size and LR come from the prior).

    ``name`` is a TrainConfig setting (``momentum``, ``weight_decay``,
    ``warmup_fraction``, ``schedule``, ``final_lr_ratio``, ``grad_clip``) or
    ``model.<kwarg>``, passed to the model factory.

    Example:
        >>> ParamSpec("weight_decay", "float", low=1e-6, high=1e-2, log=True).to_optuna()
        FloatDistribution(high=0.01, log=True, low=1e-06, step=None)
        >>> ParamSpec("momentum", "float", low=0.5, high=0.1)
        Traceback (most recent call last):
        ...
        bstune.errors.ConfigError: ParamSpec: momentum.low: `low <= high` must hold, got low=0.5, high=0.1
    """

    name: str
    kind: Kind
    low: float | None = None  # float/int: inclusive bounds
    high: float | None = None
    log: bool = False  # sample log-uniformly (needs low > 0; low >= 1 for int)
    choices: tuple[Any, ...] | None = None  # categorical: str/int/float/bool values

    def __post_init__(self) -> None:
        name = self.name

        def bad(key: str | None, reason: str) -> ConfigError:
            return ConfigError(reason, source="ParamSpec", field=f"{name}.{key}" if key else str(name))

        if not isinstance(name, str) or not (
            name in KNOWN_PARAMS or (name.startswith(MODEL_PREFIX) and name[len(MODEL_PREFIX) :].isidentifier())
        ):
            raise bad(
                None,
                f"unknown parameter {name!r}; expected one of {', '.join(KNOWN_PARAMS)} "
                f"or '{MODEL_PREFIX}<kwarg>' for a model-factory keyword",
            )
        if self.kind not in KINDS:
            raise bad("kind", f"must be one of {', '.join(KINDS)}, got {_show(self.kind)}")
        if not isinstance(self.log, bool):
            raise bad("log", f"must be true or false, got {_show(self.log)}")
        if self.kind == "categorical":
            self._check_categorical(bad)
        else:
            self._check_bounds(bad)
        self._check_known(bad)

    def _check_bounds(self, bad: _Bad) -> None:
        if self.choices is not None:
            raise bad("choices", f"only for kind 'categorical', not {self.kind!r}")
        bounds: list[float] = []
        for key in ("low", "high"):
            value = getattr(self, key)
            if self.kind == "int":
                if not is_int(value, numpy=True):
                    raise bad(key, f"must be an integer for kind 'int', got {_show(value)}")
                bounds.append(int(value))
            else:
                if not is_number(value, numpy=True) or not math.isfinite(value):
                    raise bad(key, f"must be a finite number, got {_show(value)}")
                bounds.append(float(value))
            object.__setattr__(self, key, bounds[-1])
        low, high = bounds
        if low > high:
            raise bad("low", f"`low <= high` must hold, got low={low}, high={high}")
        if self.log and self.kind == "float" and not low > 0:
            raise bad("low", f"must be > 0 when log is true, got {low}")
        if self.log and self.kind == "int" and not low >= 1:
            raise bad("low", f"must be >= 1 when log is true, got {low}")

    def _check_categorical(self, bad: _Bad) -> None:
        for key in ("low", "high"):
            if getattr(self, key) is not None:
                raise bad(key, "not used by kind 'categorical' (give choices)")
        if self.log:
            raise bad("log", "not used by kind 'categorical'")
        choices = self.choices
        if isinstance(choices, str | bytes) or not isinstance(choices, Sequence) or len(choices) == 0:
            raise bad("choices", f"must be a non-empty list, got {_show(choices)}")
        for choice in choices:
            if not isinstance(choice, str | int | float | bool) or (
                isinstance(choice, float) and not math.isfinite(choice)
            ):
                raise bad("choices", f"each choice must be a string, finite number or bool, got {_show(choice)}")
        if len({(type(c), c) for c in choices}) != len(choices):
            raise bad("choices", f"must not repeat a value, got {list(choices)}")
        object.__setattr__(self, "choices", tuple(choices))

    def _check_known(self, bad: _Bad) -> None:
        if self.name not in KNOWN_PARAMS:
            return
        kinds, valid = KNOWN_PARAMS[self.name]
        if self.kind not in kinds:
            raise bad("kind", f"{self.name} must be of kind {' or '.join(kinds)}, got {self.kind!r}")
        if not isinstance(valid, _Range):  # a set of names
            for choice in self.choices or ():
                if choice not in valid:
                    raise bad("choices", f"each choice must be one of {', '.join(valid)}, got {_show(choice)}")
            return
        values = [("low", self.low), ("high", self.high)] if self.kind != "categorical" else []
        values += [("choices", c) for c in self.choices or ()]
        for key, value in values:
            if value not in valid:
                raise bad(key, f"{self.name} must be a number in {valid}, got {_show(value)}")

    def to_optuna(self) -> BaseDistribution:
        """The matching Optuna distribution (Float-, Int- or CategoricalDistribution)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution(self.choices or ())
        low, high = float(self.low or 0), float(self.high or 0)  # both set for float/int (__post_init__)
        if self.kind == "int":
            return IntDistribution(int(low), int(high), log=self.log)
        return FloatDistribution(low, high, log=self.log)

    def to_dict(self) -> dict[str, Any]:
        """The ``params.<name>`` body of the YAML layout."""
        if self.kind == "categorical":
            return {"type": self.kind, "choices": list(self.choices or ())}
        return {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
