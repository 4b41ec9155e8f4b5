"""SearchSpace and PriorSettings: what a study searches, with a YAML/dict round trip."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bstune._validate import count_reason, is_number
from bstune.errors import ConfigError
from bstune.optim import OptimizerSpec
from bstune.space._param import ParamSpec, _show
from bstune.space._parse import _optimizer, _param, _relocate, _section, _to_float, _to_int, _yaml_reason

__all__ = ["PriorSettings", "SearchSpace"]


@dataclass(frozen=True)
class PriorSettings:
    """Widths of the search around the noise-scale prior.

    Example:
        >>> PriorSettings(batch_width=1.0)
        Traceback (most recent call last):
        ...
        bstune.errors.ConfigError: PriorSettings: batch_width: must be a number > 1, got 1.0
    """

    # prior draws take B log-uniform in [top·B_noise/w², top·B_noise]: 4 and 1 are B_noise/16 .. B_noise.
    # A sample at B does 1/(1 + B/B_noise) of its work at B -> 0 (E = E_min(1 + B/B_noise)): 50% at the
    # top. A band lower down (top 1/4: 80-98%) was measured and not taken: no better on the digits MLP,
    # worse on the digits CNN, whose best B sits near B_noise/4 (benchmarks/RESULTS.md §10).
    batch_width: float = 4.0
    batch_top: float = 1.0
    lr_width: float = 3.0  # search ln(η/η_rule(B)) in [-ln(w), +ln(w)]: the rule is trusted to ~3×
    # Adam-family η ∝ s(B)^α, s(B) = 1/(1/B + 1/B_noise). Not the square-root rule's 0.5: that is α in
    # η ∝ B^α, and the rule's s(B) already flattens towards B_noise. Fitted in the s(B) form on the
    # seed-averaged grids (benchmarks/results/lr_rule.md): 0.78 [0.67, 0.93] char LM with Adam,
    # 1.01 [0.65, 1.37] with AdamW, one α for both 0.90 [0.73, 1.07]; 0.5 lies outside every interval.
    adam_alpha: float = 0.8
    # η_rule at the probe's large batch, as a fraction of its LR range-test ceiling: the best constant
    # rate of a fixed-budget run sits well below the edge (benchmarks/RESULTS.md: ceiling/3 to /8)
    lr_anchor: float = 0.25
    batch_round: int = 1  # batch sizes are multiples of this (8 suits GPU kernels)
    # the search leaves the band and the rule's ±lr_width: it reaches every batch size of the space and
    # ln(η/η_rule(B)) in ±ln(lr_search_width); prior draws stay inside them (bstune.study.Prior)
    lr_search_width: float = 30.0
    # β: trial n is drawn from the prior with probability min(1, β/(n+1)), else asked of the sampler;
    # 0: never (the sampler alone, in the prior's coordinates)
    weight: float = 3.0

    def __post_init__(self) -> None:
        def bad(name: str, reason: str) -> ConfigError:
            return ConfigError(reason, source="PriorSettings", field=name)

        for name in ("batch_width", "lr_width"):
            value = getattr(self, name)
            if not is_number(value, numpy=True) or not math.isfinite(value) or not value > 1:
                raise bad(name, f"must be a number > 1, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not is_number(self.batch_top, numpy=True) or not 0.0 < self.batch_top <= 4.0:
            raise bad(
                "batch_top", f"must be in (0, 4] (the band's top as a multiple of B_noise), got {self.batch_top!r}"
            )
        object.__setattr__(self, "batch_top", float(self.batch_top))
        if not is_number(self.lr_anchor, numpy=True) or not 0.0 < self.lr_anchor <= 1.0:
            raise bad("lr_anchor", f"must be in (0, 1] (a fraction of the LR ceiling), got {self.lr_anchor!r}")
        object.__setattr__(self, "lr_anchor", float(self.lr_anchor))
        if not is_number(self.adam_alpha, numpy=True) or not 0.5 <= self.adam_alpha <= 1.0:
            raise bad("adam_alpha", f"must be in [0.5, 1], got {self.adam_alpha!r}")
        object.__setattr__(self, "adam_alpha", float(self.adam_alpha))
        if (reason := count_reason(self.batch_round, numpy=True)) is not None:
            raise bad("batch_round", reason)
        object.__setattr__(self, "batch_round", int(self.batch_round))
        w = self.lr_search_width
        if not is_number(w, numpy=True) or not math.isfinite(w) or not w >= self.lr_width:
            raise bad("lr_search_width", f"must be a number >= lr_width ({self.lr_width:g}), got {w!r}")
        object.__setattr__(self, "lr_search_width", float(w))
        if not is_number(self.weight, numpy=True) or not math.isfinite(self.weight) or not self.weight >= 0:
            raise bad("weight", f"must be a number >= 0 (trials' worth of prior draws), got {self.weight!r}")
        object.__setattr__(self, "weight", float(self.weight))


_TOP_KEYS = ("name", "optimizer", "batch_size", "lr", "prior", "params")
_BOUND_KEYS = ("min", "max")
_PRIOR_KEYS = tuple(f.name for f in fields(PriorSettings))


_NAMES_NO_OPTIMIZER = OptimizerSpec()  # the default optimizer, told apart from one a space names by identity


@dataclass(frozen=True)
class SearchSpace:
    """What a study searches: optimizer, batch/LR limits, prior widths, extra params.

    ``source`` (the file the space came from) only labels error messages; it is not
    part of equality, so ``SearchSpace.from_dict(s.to_dict()) == s``.
    """

    name: str
    optimizer: OptimizerSpec = _NAMES_NO_OPTIMIZER  # none named: a Task's own applies (plain SGD for a function)
    batch_min: int = 2  # smallest batch size tried
    batch_max: int | None = None  # None: the training-set size
    lr_min: float = 1e-5  # baseline mode's log-uniform LR bounds, and a hard clip of any derived LR
    lr_max: float = 10.0
    prior: PriorSettings = field(default_factory=PriorSettings)
    params: tuple[ParamSpec, ...] = ()
    source: str = field(default="<dict>", compare=False)
    # whether the space named its optimizer (an ``optimizer:`` section, or ``optimizer=``): where it did not, a
    # study of a Task trains with the Task's. Worked out from ``optimizer`` when not given; a copy
    # (``dataclasses.replace``, pickle) carries it
    optimizer_named: bool | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.optimizer_named is None:
            object.__setattr__(self, "optimizer_named", self.optimizer is not _NAMES_NO_OPTIMIZER)

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
            if (reason := count_reason(value, numpy=True)) is not None:
                raise bad(key, reason)
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
            if not is_number(lr, numpy=True) or not math.isfinite(lr) or not lr > 0:
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

    @property
    def fixed(self) -> frozenset[str]:
        """The parameters the space leaves one value (``min == max``, ``low == high``, one choice): a study
        does not search them, so a training loop that hard-codes that value trains what the study records.

        Example:
            >>> sorted(SearchSpace("s", batch_min=32, batch_max=32).fixed)
            ['batch_size']
        """
        one = [("batch_size", self.batch_max == self.batch_min), ("lr", self.lr_min == self.lr_max)]
        for spec in self.params:
            single = len(spec.choices or ()) == 1 if spec.kind == "categorical" else spec.low == spec.high
            one.append((spec.name, single))
        return frozenset(name for name, single in one if single)

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
