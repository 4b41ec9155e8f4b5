"""Numbers and intervals as the report's text writes them (report.md and report.html)."""

from __future__ import annotations

from typing import Any

__all__ = ["interval", "num"]


def num(x: Any, fmt: str = ".4g") -> str:
    """``x`` as the report shows it: ``fmt`` for a float, "n/a" for None.

    Example:
        >>> num(0.123456), num(None), num(64)
        ('0.1235', 'n/a', '64')
    """
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return format(x, fmt)
    return str(x)


def interval(pair: Any, fmt: str = ",.0f", template: str = " [{}]") -> str:
    """An interval from report.json as `` [lo–hi]`` (or ``template``); "" where there is none."""
    if not pair:
        return ""
    lo, hi = (float(v) for v in pair)
    return template.format(f"{format(lo, fmt)}–{format(hi, fmt)}")
