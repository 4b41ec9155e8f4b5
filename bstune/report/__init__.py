"""The study report: report.json (the contract), report.md and report.html (with figures)."""

from typing import TYPE_CHECKING

from bstune.report._build import Report, build_report
from bstune.report._markdown import render_markdown
from bstune.report._schema import RECOMMENDATION_NOTES

if TYPE_CHECKING:
    from bstune.report._html import render_html
    from bstune.report._plots import Plot, render_plots


# ``render_html``, ``render_plots`` and ``Plot`` load matplotlib, so only on first use.
_LAZY = {
    "render_html": "bstune.report._html",
    "render_plots": "bstune.report._plots",
    "Plot": "bstune.report._plots",
}


def __getattr__(name: str) -> object:
    """Load a name of ``_LAZY`` from its module on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RECOMMENDATION_NOTES", "Plot", "Report", "build_report", "render_html", "render_markdown", "render_plots"]
