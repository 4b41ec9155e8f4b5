"""Small checks of user-given numbers, written once: counts, positive numbers, finite values.

Python's ``bool`` is an ``int`` (``True + True == 2``), so every check of a count or a
number has to turn bools away first; these helpers do, so that a call site reads as
what it means. The ``*_reason`` functions return the reason a value is bad, worded
for a :class:`~bstune.errors.ConfigError` (``"must be a positive integer, got 0"``),
or ``None`` when it is good; :func:`check_count` raises the error itself.

This module imports nothing of bstune but its errors: every layer may use it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, TypeGuard

from bstune.errors import ConfigError

__all__ = ["check_count", "count_reason", "finite", "is_int", "is_number", "number_reason"]


def is_int(value: object, *, numpy: bool = False) -> TypeGuard[int]:
    """Whether ``value`` is an integer and not a bool.

    A Python ``int``; with ``numpy=True`` any integer type (``numbers.Integral``, numpy's
    included), for a caller that converts it with ``int()`` before keeping it.

    Example:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    kind = numbers.Integral if numpy else int
    return isinstance(value, kind) and not isinstance(value, bool)


def is_number(value: object, *, numpy: bool = False) -> TypeGuard[float]:
    """Whether ``value`` is a real number and not a bool.

    An ``int`` or a ``float``; with ``numpy=True`` any real type (``numbers.Real``, numpy's
    included), for a caller that converts it with ``float()`` before keeping it.

    Example:
        >>> is_number(0.5), is_number(2), is_number(False), is_number("1")
        (True, True, False, False)
    """
    kind = numbers.Real if numpy else (int, float)
    return isinstance(value, kind) and not isinstance(value, bool)


def finite(value: Any) -> float | None:
    """``float(value)`` when it is a finite ``int`` or ``float`` (not a bool), else ``None``.

    Example:
        >>> finite(3), finite(float("nan")), finite(True), finite("1")
        (3.0, None, None, None)
    """
    if not is_number(value):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def count_reason(value: object, *, minimum: int = 1, numpy: bool = False) -> str | None:
    """Why ``value`` is not an integer of at least ``minimum`` (see :func:`is_int`), or ``None``.

    Example:
        >>> count_reason(0), count_reason(-1, minimum=0), count_reason(True), count_reason(2)
        ('must be a positive integer, got 0', 'must be a non-negative integer, got -1', 'must be a positive integer, got True', None)
    """
    if is_int(value, numpy=numpy) and value >= minimum:
        return None
    wanted = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
    return f"must be {wanted}, got {value!r}"


def number_reason(value: object, *, minimum: float = 0.0, strict: bool = True, unit: str = "") -> str | None:
    """Why ``value`` is not a finite number above ``minimum`` (at least it, with ``strict=False``), or ``None``.

    ``unit`` ends the noun: ``"must be a positive number of seconds"``.

    Example:
        >>> number_reason(0.0), number_reason(-1, strict=False), number_reason(float("inf")), number_reason(0.5)
        ('must be a positive number, got 0.0', 'must be a non-negative number, got -1', 'must be a positive number, got inf', None)
    """
    if is_number(value) and math.isfinite(value) and (value > minimum if strict else value >= minimum):
        return None
    if minimum == 0:
        wanted = "a positive number" if strict else "a non-negative number"
    else:
        wanted = f"a number {'>' if strict else '>='} {minimum}"
    return f"must be {wanted}{' ' + unit if unit else ''}, got {value!r}"


def check_count(value: object, *, source: str, field: str, minimum: int = 1, numpy: bool = False) -> int:
    """``value`` as an ``int`` if it is an integer of at least ``minimum``, else a ``ConfigError`` naming ``source`` and ``field``.

    Example:
        >>> check_count(4, source="compute_optimal", field="n_workers")
        4
        >>> check_count(0, source="compute_optimal", field="n_workers")
        Traceback (most recent call last):
        ...
        bstune.errors.ConfigError: compute_optimal: n_workers: must be a positive integer, got 0
    """
    if is_int(value, numpy=numpy) and value >= minimum:
        return int(value)
    raise ConfigError(count_reason(value, minimum=minimum, numpy=numpy) or "", source=source, field=field)
