"""Declarative search spaces: what a study may vary, and within which limits.

Batch size and learning rate are not listed as ordinary parameters: the study
searches them in coordinates centred on the measured noise scale (log₂ B/B_noise)
and on the LR rule η ∝ B^α (ln η/η_rule(B)), whose widths are set in ``prior``.
``batch_size`` and ``lr`` give hard limits for those, and the bounds of the
log-uniform LR of the baseline (prior-free) mode. Everything else goes in
``params``: a TrainConfig setting or a keyword of the model factory (``model.*``).

A space is a YAML file (read with ``yaml.safe_load`` only: no tag runs code)::

    name: mlp_classifier
    optimizer: {family: sgd, momentum: 0.9, weight_decay: 0.0}   # OptimizerSpec fields
    batch_size: {min: 8, max: 1024}        # max: null means the training-set size
    lr: {min: 1.0e-4, max: 3.0}
    prior: {batch_width: 4, lr_width: 3, adam_alpha: 0.5, batch_round: 1}
    params:
      weight_decay: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}
      warmup_fraction: {type: float, low: 0.0, high: 0.2}
      schedule: {type: categorical, choices: [constant, cosine]}
      model.hidden: {type: int, low: 32, high: 256, log: true}

Only ``name`` is required. A parameter also fixed under ``optimizer`` is searched
(the search overrides the fixed value). Note that YAML reads ``1e-4`` (no dot) as
a string; numeric strings are accepted wherever a number is expected.

Every problem raises :class:`~bstune.errors.ConfigError` naming the file, the
dotted key (``params.weight_decay.low``) and what was expected.

Example:
    >>> space = SearchSpace.from_dict({"name": "demo", "batch_size": {"min": 8, "max": 512}})
    >>> space.batch_min, space.batch_max, space.optimizer.family
    (8, 512, 'sgd')
    >>> SearchSpace.from_dict({"name": "demo", "batch_size": {"min": 0}})
    Traceback (most recent call last):
    ...
    bstune.errors.ConfigError: <dict>: batch_size.min: must be a positive integer, got 0
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml

from bstune.errors import ConfigError
from bstune.optim import FAMILIES, OptimizerSpec
from bstune.training import SCHEDULES

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

__all__ = ["ParamSpec", "PriorSettings", "SearchSpace"]

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
        if not _is_number(x):
            return False
        v = float(x)  # type: ignore[arg-type]
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


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


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
                if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                    raise bad(key, f"must be an integer for kind 'int', got {_show(value)}")
                bounds.append(int(value))
            else:
                if not _is_number(value) or not math.isfinite(value):
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


@dataclass(frozen=True)
class PriorSettings:
    """Widths of the search around the noise-scale prior.

    Example:
        >>> PriorSettings(batch_width=1.0)
        Traceback (most recent call last):
        ...
        bstune.errors.ConfigError: PriorSettings: batch_width: must be a number > 1, got 1.0
    """

    batch_width: float = 4.0  # search log2(B/B_noise) in [-log2(w), +log2(w)]: 4 is B_noise/4 .. 4·B_noise
    lr_width: float = 3.0  # search ln(η/η_rule(B)) in [-ln(w), +ln(w)]: the rule is trusted to ~3×
    adam_alpha: float = 0.5  # Adam-family η ∝ B^α; 0.5 is the square-root rule (Malladi et al. 2022)
    batch_round: int = 1  # batch sizes are multiples of this (8 suits GPU kernels)

    def __post_init__(self) -> None:
        def bad(name: str, reason: str) -> ConfigError:
            return ConfigError(reason, source="PriorSettings", field=name)

        for name in ("batch_width", "lr_width"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or not value > 1:
                raise bad(name, f"must be a number > 1, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not _is_number(self.adam_alpha) or not 0.5 <= self.adam_alpha <= 1.0:
            raise bad("adam_alpha", f"must be in [0.5, 1], got {self.adam_alpha!r}")
        object.__setattr__(self, "adam_alpha", float(self.adam_alpha))
        if not isinstance(self.batch_round, numbers.Integral) or isinstance(self.batch_round, bool):
            raise bad("batch_round", f"must be a positive integer, got {self.batch_round!r}")
        if self.batch_round < 1:
            raise bad("batch_round", f"must be a positive integer, got {self.batch_round!r}")
        object.__setattr__(self, "batch_round", int(self.batch_round))


_TOP_KEYS = ("name", "optimizer", "batch_size", "lr", "prior", "params")
_BOUND_KEYS = ("min", "max")
_PARAM_KEYS = ("type", "low", "high", "log", "choices")
_OPTIMIZER_KEYS = tuple(f.name for f in fields(OptimizerSpec))
_PRIOR_KEYS = tuple(f.name for f in fields(PriorSettings))


@dataclass(frozen=True)
class SearchSpace:
    """What a study searches: optimizer, batch/LR limits, prior widths, extra params.

    ``source`` (the file the space came from) only labels error messages; it is not
    part of equality, so ``SearchSpace.from_dict(s.to_dict()) == s``.
    """

    name: str
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    batch_min: int = 2  # smallest batch size tried
    batch_max: int | None = None  # None: the training-set size
    lr_min: float = 1e-5  # baseline mode's log-uniform LR bounds, and a hard clip of any derived LR
    lr_max: float = 10.0
    prior: PriorSettings = field(default_factory=PriorSettings)
    params: tuple[ParamSpec, ...] = ()
    source: str = field(default="<dict>", compare=False)

    def __post_init__(self) -> None:
        def bad(name: str, reason: str) -> ConfigError:
            return ConfigError(reason, source=self.source, field=name)

        if not isinstance(self.name, str) or not self.name.strip():
            raise bad("name", f"must be a non-empty string, got {_show(self.name)}")
        if not isinstance(self.optimizer, OptimizerSpec):
            raise bad("optimizer", f"must be an OptimizerSpec, got {_show(self.optimizer)}")
        if not isinstance(self.prior, PriorSettings):
            raise bad("prior", f"must be PriorSettings, got {_show(self.prior)}")
        for key, value in (("batch_size.min", self.batch_min), ("batch_size.max", self.batch_max)):
            if value is None and key == "batch_size.max":
                continue
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise bad(key, f"must be a positive integer, got {value!r}")
        if self.batch_max is not None and self.batch_min > self.batch_max:
            raise bad("batch_size.min", f"`min <= max` must hold, got min={self.batch_min}, max={self.batch_max}")
        r = self.prior.batch_round
        if self.batch_max is not None and -(-self.batch_min // r) * r > self.batch_max:
            raise bad(
                "prior.batch_round",
                f"no multiple of {r} lies in batch_size [{self.batch_min}, {self.batch_max}]; "
                "lower batch_round or widen the range",
            )
        for key, lr in (("lr.min", self.lr_min), ("lr.max", self.lr_max)):
            if not _is_number(lr) or not math.isfinite(lr) or not lr > 0:
                raise bad(key, f"must be a finite number > 0, got {lr!r}")
        if self.lr_min > self.lr_max:
            raise bad("lr.min", f"`min <= max` must hold, got min={self.lr_min}, max={self.lr_max}")
        object.__setattr__(self, "lr_min", float(self.lr_min))
        object.__setattr__(self, "lr_max", float(self.lr_max))
        if isinstance(self.params, str | bytes) or not isinstance(self.params, Sequence):
            raise bad("params", f"must be a sequence of ParamSpec, got {_show(self.params)}")
        seen: set[str] = set()
        for p in self.params:
            if not isinstance(p, ParamSpec):
                raise bad("params", f"must hold ParamSpec objects, got {_show(p)}")
            if p.name in seen:
                raise bad(f"params.{p.name}", "listed twice")
            seen.add(p.name)
            if p.name == "momentum" and self.optimizer.family != "sgd":
                raise bad(
                    "params.momentum",
                    f"momentum applies to optimizer family 'sgd' only, this space uses {self.optimizer.family!r}",
                )
        object.__setattr__(self, "params", tuple(self.params))

    # -- reading ---------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> SearchSpace:
        """Build and validate a space from the YAML layout (see the module docstring)."""
        top = _section(data, source, "", _TOP_KEYS)
        if "name" not in top:
            raise ConfigError("missing; expected a string naming the space", source=source, field="name")
        kwargs: dict[str, Any] = {"name": top["name"], "source": source}
        if top.get("optimizer") is not None:
            kwargs["optimizer"] = _optimizer(top["optimizer"], source)
        bounds = {"batch_size": ("batch_min", "batch_max", _to_int), "lr": ("lr_min", "lr_max", _to_float)}
        for section, (low_attr, high_attr, convert) in bounds.items():
            body = _section(top.get(section), source, section, _BOUND_KEYS)
            if "min" in body:
                kwargs[low_attr] = convert(body["min"], source, f"{section}.min")
            if "max" in body and (body["max"] is not None or section == "lr"):
                kwargs[high_attr] = convert(body["max"], source, f"{section}.max")
        prior = _section(top.get("prior"), source, "prior", _PRIOR_KEYS)
        if prior:
            values: dict[str, Any] = {
                key: (_to_int if key == "batch_round" else _to_float)(value, source, f"prior.{key}")
                for key, value in prior.items()
            }
            kwargs["prior"] = _relocate(lambda: PriorSettings(**values), source, "prior")
        params = _section(top.get("params"), source, "params", None)
        kwargs["params"] = tuple(_param(name, body, source) for name, body in params.items())
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """Read a YAML file with ``yaml.safe_load`` (tags that construct objects are refused)."""
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("no such file", source=source) from None
        except IsADirectoryError:
            raise ConfigError("is a directory, expected a YAML file", source=source) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=source) from None
        except OSError as exc:
            raise ConfigError(f"cannot be read: {exc.strerror or exc}", source=source) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(_yaml_reason(exc), source=source) from None
        except RecursionError:
            raise ConfigError("invalid YAML: nested too deeply to parse", source=source) from None
        except Exception as exc:  # a scalar YAML resolves but Python rejects: date 2020-13-45, a 5000-digit int
            raise ConfigError(f"invalid YAML value: {type(exc).__name__}: {exc}", source=source) from None
        if data is None:
            raise ConfigError(f"the file is empty; expected a mapping with keys {', '.join(_TOP_KEYS)}", source=source)
        return cls.from_dict(data, source=source)

    @classmethod
    def coerce(cls, value: SearchSpace | str | Path | Mapping[str, Any]) -> SearchSpace:
        """Accept a space, the path of a YAML file, or a mapping in the YAML layout."""
        if isinstance(value, SearchSpace):
            return value
        if isinstance(value, str | Path):
            return cls.from_yaml(value)
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise ConfigError(f"expected a SearchSpace, a YAML path or a mapping, got {_show(value)}", source="SearchSpace")

    # -- writing ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The YAML layout as plain data; optimizer settings left at their defaults are omitted."""
        optimizer: dict[str, Any] = {"family": self.optimizer.family}
        for f in fields(OptimizerSpec):
            value = getattr(self.optimizer, f.name)
            if f.name != "family" and value != f.default:
                optimizer[f.name] = list(value) if isinstance(value, tuple) else value
        return {
            "name": self.name,
            "optimizer": optimizer,
            "batch_size": {"min": self.batch_min, "max": self.batch_max},
            "lr": {"min": self.lr_min, "max": self.lr_max},
            "prior": {f.name: getattr(self.prior, f.name) for f in fields(PriorSettings)},
            "params": {p.name: p.to_dict() for p in self.params},
        }

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The space as YAML text; also written to ``path`` when one is given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


# -- parsing helpers: each checks one value and names its dotted key on failure -----------


def _section(value: object, source: str, where: str, known: tuple[str, ...] | None) -> dict[str, Any]:
    """A mapping with string keys (``known``, when given); None reads as empty."""
    if value is None and where:
        return {}
    expected = f"a mapping with keys {', '.join(known)}" if known else "a mapping of names to settings"
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected {expected}, got {_show(value)}", source=source, field=where or None)
    prefix = f"{where}." if where else ""
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"keys must be strings, got {_show(key)}", source=source, field=where or None)
        if known is not None and key not in known:
            raise ConfigError(
                f"unknown key {key!r}; known keys: {', '.join(known)}", source=source, field=f"{prefix}{key}"
            )
    return dict(value)


def _to_float(value: object, source: str, where: str) -> float:
    """A finite number; numeric strings (YAML reads ``1e-4`` as one) are accepted."""
    try:
        if _is_number(value):
            number = float(value)  # type: ignore[arg-type]
        elif isinstance(value, str):
            number = float(value.strip())
        else:
            raise TypeError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"expected a number, got {_show(value)}", source=source, field=where) from None
    if not math.isfinite(number):
        raise ConfigError(f"expected a finite number, got {_show(value)}", source=source, field=where)
    return number


def _to_int(value: object, source: str, where: str) -> int:
    """An integer; an integral float or numeric string (``1024.0``, ``"1e3"``) is accepted."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    try:
        number = _to_float(value, source, where)
    except ConfigError:
        number = math.nan
    if not number.is_integer():
        raise ConfigError(f"expected an integer, got {_show(value)}", source=source, field=where)
    return int(number)


def _to_bool(value: object, source: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, got {_show(value)}", source=source, field=where)
    return value


def _relocate(build: Callable[[], _T], source: str, prefix: str) -> _T:
    """Run ``build()``; re-raise its ConfigError against ``source`` and ``prefix.<field>``."""
    try:
        return build()
    except ConfigError as exc:
        where = f"{prefix}.{exc.field}" if exc.field else prefix
        raise ConfigError(exc.reason, source=source, field=where) from None


def _optimizer(value: object, source: str) -> OptimizerSpec:
    if isinstance(value, str):  # `optimizer: adamw`
        value = {"family": value}
    body = _section(value, source, "optimizer", _OPTIMIZER_KEYS)
    kwargs: dict[str, Any] = {}
    for key, raw in body.items():
        where = f"optimizer.{key}"
        if key == "family":
            if not isinstance(raw, str) or raw.lower() not in FAMILIES:
                raise ConfigError(
                    f"unknown optimizer family; expected one of {', '.join(FAMILIES)}, got {_show(raw)}",
                    source=source,
                    field=where,
                )
            kwargs[key] = raw.lower()
        elif key == "nesterov":
            kwargs[key] = _to_bool(raw, source, where)
        elif key == "betas":
            if isinstance(raw, str | bytes) or not isinstance(raw, Sequence) or len(raw) != 2:
                raise ConfigError(f"expected a list of two numbers, got {_show(raw)}", source=source, field=where)
            kwargs[key] = tuple(_to_float(b, source, f"{where}[{i}]") for i, b in enumerate(raw))
        else:
            kwargs[key] = _to_float(raw, source, where)
    return _relocate(lambda: OptimizerSpec(**kwargs), source, "optimizer")


def _param(name: str, value: object, source: str) -> ParamSpec:
    where = f"params.{name}"
    body = _section(value, source, where, _PARAM_KEYS) if value is not None else None
    if body is None or "type" not in body:
        raise ConfigError(f"missing key 'type'; expected one of {', '.join(KINDS)}", source=source, field=where)
    kind = body["type"]
    if kind not in KINDS:
        raise ConfigError(
            f"expected one of {', '.join(KINDS)}, got {_show(kind)}", source=source, field=f"{where}.type"
        )
    kwargs: dict[str, Any] = {"name": name, "kind": kind}
    if kind == "categorical":
        for key in ("low", "high", "log"):
            if key in body:
                raise ConfigError(
                    "not used by type 'categorical' (give choices)", source=source, field=f"{where}.{key}"
                )
        choices = body.get("choices")
        if isinstance(choices, str | bytes) or not isinstance(choices, Sequence) or not choices:
            raise ConfigError(
                f"expected a non-empty list of choices, got {_show(choices)}", source=source, field=f"{where}.choices"
            )
        numeric = name in KNOWN_PARAMS and isinstance(KNOWN_PARAMS[name][1], _Range)
        kwargs["choices"] = tuple(_to_float(c, source, f"{where}.choices") if numeric else c for c in choices)
    else:
        if "choices" in body:
            raise ConfigError(f"only for type 'categorical', not {kind!r}", source=source, field=f"{where}.choices")
        convert = _to_int if kind == "int" else _to_float
        for key in ("low", "high"):
            if key not in body:
                raise ConfigError(f"missing; type {kind!r} needs low and high", source=source, field=f"{where}.{key}")
            kwargs[key] = convert(body[key], source, f"{where}.{key}")
        if "log" in body:
            kwargs["log"] = _to_bool(body["log"], source, f"{where}.log")
    try:
        return ParamSpec(**kwargs)
    except ConfigError as exc:  # ParamSpec names the YAML key `type` by its attribute, `kind`
        key = "type" if exc.field == f"{name}.kind" else (exc.field or name)[len(name) + 1 :]
        raise ConfigError(exc.reason, source=source, field=f"{where}.{key}" if key else where) from None


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """``invalid YAML at line 3, column 7: <problem>`` from a PyYAML error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
