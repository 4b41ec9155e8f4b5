"""The study report: report.json (the contract), report.md and report.html (with figures)."""

from typing import TYPE_CHECKING

from bstune.report._build import Report, build_report
from bstune.report._markdown import render_markdown

if TYPE_CHECKING:
    from bstune.report._html import render_html
    from bstune.report._plots import Plot, render_plots


def __getattr__(name: str) -> object:
    """``render_html``, ``render_plots`` and ``Plot`` load matplotlib, so only on first use."""
    if name == "render_html":
        from bstune.report._html import render_html

        return render_html
    if name in ("render_plots", "Plot"):
        from bstune.report import _plots

        return getattr(_plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Plot", "Report", "build_report", "render_html", "render_markdown", "render_plots"]
