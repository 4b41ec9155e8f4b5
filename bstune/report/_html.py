"""report.html: report.md's content with the report's figures, in one self-contained file.

The text is report.md itself (:func:`render_markdown`), converted block by block, so
the two never say different things; each section then gets its figure, and the
throughput and compute-optimal numbers, one line in report.md, get sections of their
own. No external URL, stylesheet, font or script: the figures are base64 PNGs inside
the file, so it opens offline and can be mailed or archived as it is. All text is
passed through :func:`html.escape` before any markup is added.
"""

from __future__ import annotations

import base64
import re
import struct
from html import escape
from typing import Any

from bstune.report._markdown import render_markdown
from bstune.report._plots import Plot, render_plots

__all__ = ["SECTIONS", "render_html"]

# (id, heading) in page order; the headings match report.md's where it has the section
SECTIONS = (
    ("recommendation", "Recommendation"),
    ("noise-scale", "Gradient noise scale"),
    ("critical-batch", "Critical batch size"),
    ("throughput", "Throughput"),
    ("compute-optimal", "Compute-optimal batch size"),
    ("generalization-gap", "Generalization gap"),
    ("trials", "Trials"),
)
_FIGURE_OF = {
    "recommendation": "lr",
    "noise-scale": "noise",
    "critical-batch": "steps",
    "throughput": "throughput",
    "generalization-gap": "gap",
}
_BESIDE = {"recommendation", "throughput"}  # their last table is two columns wide: the figure goes beside it
_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2328; background: #fff; max-width: 960px; margin: 0 auto; padding: 1.5rem 2rem 3rem; }
h1 { font-size: 1.7rem; margin: 0 0 .3rem; overflow-wrap: anywhere; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 .6rem; padding-bottom: .25rem; border-bottom: 1px solid #d0d7de; }
nav { font-size: .9rem; margin: .4rem 0 1rem; }
nav a { color: #0969da; text-decoration: none; margin-right: .9rem; white-space: nowrap; }
p { margin: .5rem 0; overflow-wrap: anywhere; }
p.lead { background: #ddf4ff; border-left: 4px solid #0969da; padding: .7rem 1rem; margin: .6rem 0 .9rem; }
.note { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: .5rem .8rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: .2rem .7rem; }
th { background: #f6f8fa; font-weight: 600; }
.r { text-align: right; } .c { text-align: center; }
figure { margin: 1rem 0 1.4rem; }
.pair { display: flex; gap: 1.5rem; align-items: flex-start; }
.pair > table { flex: none; }
.pair > figure { flex: 1 1 0; min-width: 0; margin-top: .6rem; }
figure img { display: block; width: 100%; height: auto; }
figcaption { color: #57606a; font-size: .85rem; margin-top: .2rem; }
"""


def _inline(text: str) -> str:
    """One markdown line as HTML: escaped first, then ``**bold**``."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escape(text))


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _md_table(lines: list[str]) -> str:
    """A pipe table: header, alignment row (``---:`` right, ``:---:`` centre), body."""
    align = [
        " class=c" if a.startswith(":") and a.endswith(":") else " class=r" if a.endswith(":") else ""
        for a in _cells(lines[1])
    ]
    head = "".join(f"<th{a}>{_inline(c)}</th>" for c, a in zip(_cells(lines[0]), align, strict=False))
    body = "".join(
        "<tr>" + "".join(f"<td{a}>{_inline(c)}</td>" for c, a in zip(_cells(line), align, strict=False)) + "</tr>"
        for line in lines[2:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_blocks(lines: list[str]) -> list[str]:
    """The subset of markdown render_markdown writes: paragraphs (a line break per line) and pipe tables."""
    out: list[str] = []
    para: list[str] = []
    table: list[str] = []
    for line in [*lines, ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            out.append(_md_table(table))
            table = []
        if line.strip():
            para.append(_inline(line))
        elif para:
            out.append("<p>" + "<br>\n".join(para) + "</p>")
            para = []
    return out


def _md_sections(markdown: str) -> tuple[str, dict[str, list[str]]]:
    """(title, heading -> its lines) of report.md."""
    title, current = "", ""
    sections: dict[str, list[str]] = {}
    for line in markdown.splitlines():
        if line.startswith("# ") and not title:
            title = line[2:]
        elif line.startswith("## "):
            current = line[3:].strip()
            sections[current] = []
        elif current:
            sections[current].append(line)
    return title, sections


def _png_size(png: bytes) -> tuple[int, int]:
    width, height = struct.unpack(">II", png[16:24])  # IHDR's width and height follow the 8-byte signature
    return int(width), int(height)


def _figure(plot: Plot) -> str:
    caption = f"<figcaption>{escape(plot.title)}</figcaption>"
    if plot.png is None:
        return (
            f'<figure id="fig-{plot.name}" class="skipped">'
            f'<p class="note">Plot skipped: {escape(plot.note)}</p>{caption}</figure>'
        )
    w, h = _png_size(plot.png)
    src = "data:image/png;base64," + base64.b64encode(plot.png).decode("ascii")
    return f'<figure id="fig-{plot.name}"><img src="{src}" alt="{escape(plot.title)}" width="{w}" height="{h}">{caption}</figure>'


def render_html(data: dict[str, Any]) -> str:
    """report.html for report.json's ``data``: one self-contained page, recommendation first.

    Sections carry the ids of :data:`SECTIONS`; figures the ids ``fig-<name>`` of
    :func:`~bstune.report._plots.render_plots`, a skipped one with a visible note.
    """
    title, md = _md_sections(render_markdown(data))
    plots = render_plots(data)
    study = data.get("study", {})
    sub = ", ".join(f"{k} {study[k]}" for k in ("mode", "objective") if study.get(k) is not None)
    head = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_inline(title)}</h1>",
        f"<p>{escape(sub)}</p>" if sub else "",
    ]
    nav: list[str] = []
    sections: list[str] = []
    known = {heading for _, heading in SECTIONS}
    more = [
        (re.sub(r"[^a-z0-9]+", "-", h.lower()).strip("-"), h) for h in md if h not in known
    ]  # report.md's newer ones
    for sid, heading in [*SECTIONS[:-1], *more, SECTIONS[-1]]:
        body = _md_blocks(md.get(heading, []))
        if sid == "recommendation" and body and body[0].startswith("<p>"):
            body[0] = '<p class="lead">' + body[0][3:]
        if sid in _FIGURE_OF:
            plot = _figure(plots[_FIGURE_OF[sid]])
            if sid in _BESIDE and body and body[-1].startswith("<table>"):  # a narrow table: the figure beside it
                body[-1] = f'<div class="pair">{body[-1]}{plot}</div>'
            else:
                body.append(plot)
        nav.append(f'<a href="#{sid}">{escape(heading)}</a>')
        sections += [f'<section id="{sid}">', f"<h2>{escape(heading)}</h2>", *body, "</section>"]
    out = [*head, "<nav>" + "".join(nav) + "</nav>", *sections, "</body>", "</html>", ""]
    return "\n".join(line for line in out if line) + "\n"
