"""The study report: report.json (the contract) and report.md."""

from bstune.report._build import Report, build_report
from bstune.report._markdown import render_markdown

__all__ = ["Report", "build_report", "render_markdown"]
