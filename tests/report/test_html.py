"""report.html: one self-contained page with every section and figure, checked as HTML and in a real browser."""

from __future__ import annotations

import base64
import dataclasses
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bstune.report import build_report
from bstune.study import ProbeResult, StudyResult
from tests.report.test_build import TARGET, _result

SECTION_IDS = [
    "recommendation",
    "noise-scale",
    "critical-batch",
    "throughput",
    "compute-optimal",
    "generalization-gap",
    "trials",
]
FIGURES = ["fig-lr", "fig-noise", "fig-steps", "fig-throughput", "fig-gap"]
HOSTILE_NAME = "<script>alert('x')</script> & co"
# headless Chromium in a closed network: without the background-networking flags its connections are refused
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


class _Page(HTMLParser):
    """Tags, ids, attributes and text of a page, and which figure holds which image."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: list[str] = []
        self.urls: list[str] = []
        self.text: list[str] = []
        self.images: dict[str, str] = {}  # figure id -> img src
        self.notes: dict[str, str] = {}  # figure id -> text of a skipped figure's note
        self.h2: list[str] = []
        self._figure: str | None = None
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        self._in.append(tag)
        if "id" in a:
            self.ids.append(a["id"])
        self.urls += [a[k] for k in ("src", "href") if k in a]
        if tag == "figure":
            self._figure = a.get("id")
        if tag == "img" and self._figure:
            self.images[self._figure] = a.get("src", "")
        if tag == "img":
            self._in.pop()  # void element: no end tag

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in and self._in[-1] == "h2":
            self.h2.append(data.strip())
        if self._figure and self._in and self._in[-1] == "p":
            self.notes[self._figure] = self.notes.get(self._figure, "") + data


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def _with_probe(result: StudyResult) -> StudyResult:
    """The synthetic study as prior mode runs it: a probe with B_simple, its trajectory and throughput."""
    trajectory = [
        {
            "samples": 4096 * k,
            "b_simple": 200.0 * (1 - math.exp(-k / 2)),
            "ci": [60.0 * k - 150, 300.0 + 400 / k],
            "temperature": 1e-3,
        }
        for k in range(1, 9)
    ]
    trajectory[0]["ci"][1] = None  # an unbounded interval early on, as a real probe records it
    probe = ProbeResult(
        batch_size=32,
        lr_ceiling=1.0,
        lr_ceiling_large=2.0,
        large_batch=512,
        lr_probe=0.05,
        b_simple=180.0,
        b_simple_ci=(140.0, 240.0),
        trajectory=trajectory,
        temperature=1e-3,
        throughput={b: 40.0 * b / (1 + b / 512) for b in (16, 32, 64, 128, 256, 512, 1024)},  # saturates
        batch_ceiling=None,
        samples_used=40_000,
        device="cpu",
    )
    return dataclasses.replace(result, probe=probe, mode="prior", samples_probe=40_000, study_name=HOSTILE_NAME)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The full synthetic report saved once: (report.html, its text)."""
    folder = tmp_path_factory.mktemp("report")
    files = build_report(_with_probe(_result()), {"metric": "train_loss", "value": TARGET}).save(str(folder))
    assert set(files) == {"json", "md", "html"}
    path = Path(files["html"])
    assert path == folder / "report.html"
    return path, path.read_text(encoding="utf-8")


def test_every_section_and_figure_is_in_one_self_contained_file(saved: tuple[Path, str]) -> None:
    _, html = saved
    page = _parse(html)
    assert [i for i in page.ids if i in SECTION_IDS] == SECTION_IDS  # in this order: recommendation first
    for fig in FIGURES:
        src = page.images.get(fig, "")
        assert src.startswith("data:image/png;base64,"), f"{fig}: no embedded PNG"
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in html and "https://" not in html
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    assert all(u.startswith(("data:image/png;base64,", "#")) for u in page.urls)


def test_recommendation_comes_first_with_the_lr_table(saved: tuple[Path, str]) -> None:
    _, html = saved
    rec = html.split('<section id="recommendation">', 1)[1].split("</section>", 1)[0]
    assert "<strong>Train with batch size 16 and learning rate" in rec and "Expected cost" in rec
    assert "<th class=r>batch size</th><th class=r>learning rate</th>" in rec
    assert "<td class=r>1024</td>" in rec  # a row of the lr table
    assert "B_crit ≈ 128" in html  # report.md's text, carried over
    assert html.index('id="recommendation"') < html.index('id="noise-scale"')


def test_text_from_the_data_is_escaped(saved: tuple[Path, str]) -> None:
    _, html = saved
    page = _parse(html)
    assert "script" not in page.tags
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in html
    assert any(HOSTILE_NAME in t for t in page.text)  # shown as text, as written


def test_a_section_without_data_says_why_instead_of_plotting(tmp_path: Path) -> None:
    files = build_report(_result(), {"metric": "train_loss", "value": TARGET}).save(str(tmp_path))  # baseline: no probe
    page = _parse(Path(files["html"]).read_text(encoding="utf-8"))
    assert [i for i in page.ids if i in SECTION_IDS] == SECTION_IDS
    assert set(page.images) == {"fig-lr", "fig-steps", "fig-gap"}
    assert "Plot skipped: no probe in this study (baseline mode)" in page.notes["fig-noise"]
    assert "Plot skipped: throughput was not measured" in page.notes["fig-throughput"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    pytest.skip("chromium not installed: no `chromium` or `chromium-browser` on PATH (apt-get install chromium)")


@pytest.mark.slow
def test_renders_in_a_real_headless_browser(saved: tuple[Path, str], tmp_path: Path) -> None:
    import matplotlib.image

    browser = _chromium()
    path, _ = saved
    url = path.resolve().as_uri()

    def run(*args: str, profile: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / profile).mkdir()
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / profile}", "--window-size=1280,4000"]
        return subprocess.run([browser, *flags, *args, url], capture_output=True, text=True, timeout=180, check=False)

    dom = run("--dump-dom", profile="dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = _parse(dom.stdout)
    assert page.h2 == [
        "Recommendation",
        "Gradient noise scale",
        "Critical batch size",
        "Throughput",
        "Compute-optimal batch size",
        "Generalization gap",
        "Trials",
    ]
    assert set(FIGURES) <= set(page.images)

    png = tmp_path / "report.png"
    shot = run(f"--screenshot={png}", profile="shot")
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    assert png.stat().st_size > 50_000
    pixels = matplotlib.image.imread(str(png))  # (4000, 1280, 3 or 4) floats in [0, 1]
    assert pixels.shape[:2] == (4000, 1280)
    rgb = pixels[..., :3]
    assert float(rgb.std()) > 0.02, "the screenshot is one flat colour"
    colourful = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.2  # the figures' blues and oranges, not only grey text
    assert colourful.mean() > 0.002  # ~0.4% with the figures drawn, under 0.1% without them


def test_report_md_has_the_sections_report_html_has_in_the_same_order(saved: tuple[Path, str]) -> None:
    """A newcomer: report.html had Throughput and Compute-optimal sections report.md lacked (its "not computed"
    reason too), and the two put Re-scored and Trials in opposite orders."""
    path, html = saved
    md = (path.parent / "report.md").read_text(encoding="utf-8")
    headings = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert headings == _parse(html).h2
    assert {"Throughput", "Compute-optimal batch size"} <= set(headings)
    compute = md.split("## Compute-optimal batch size", 1)[1].split("\n## ", 1)[0]
    assert "| least device time, 1 worker | " in compute and "time from the S(B) fit" in compute
    assert "<td>least device time, 1 worker</td>" in html.split('id="compute-optimal"', 1)[1]
