"""Reading untyped YAML/dict values into typed fields; every error names the file and the dotted key."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any

import yaml

from bstune._validate import is_int, is_number
from bstune.errors import ConfigError
from bstune.optim import FAMILIES, OptimizerSpec
from bstune.space._param import _T, KINDS, KNOWN_PARAMS, ParamSpec, _Range, _show

_PARAM_KEYS = ("type", "low", "high", "log", "choices")
_OPTIMIZER_KEYS = tuple(f.name for f in fields(OptimizerSpec))

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
        if is_number(value, numpy=True):
            number = float(value)
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
    if is_int(value, numpy=True):
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
