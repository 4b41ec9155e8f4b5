"""report.md's throughput and compute-optimal sections (from report.json's ``throughput`` and
``compute_optimal``): report.html renders the same lines, so the two pages say the same."""

from __future__ import annotations

from typing import Any

from bstune.report._markdown_recommend import against_the_fit
from bstune.report._text import num as _n

__all__ = ["compute_optimal_lines", "throughput_lines"]


def _span(pair: Any) -> str:
    """``lo–hi`` of an interval from report.json ("n/a" where there is none)."""
    return "n/a" if not pair else f"{float(pair[0]):,.0f}–{float(pair[1]):,.0f}"


def throughput_lines(data: dict[str, Any]) -> list[str]:
    """The probe's samples/s per batch size, with the per-step spread where it was measured ([] without a probe).

    Example:
        >>> print("\\n".join(throughput_lines({"throughput": {"samples_per_s": {"8": 900.0, "64": 5000.0},
        ...     "samples_per_s_iqr": {"8": [850.0, 950.0]}, "device": "cpu"}})))
        <BLANKLINE>
        ## Throughput
        <BLANKLINE>
        Training throughput measured by the probe on cpu: each step timed alone after untimed warm-up steps; samples/s at the median step, and the interquartile range of the per-step rates.
        <BLANKLINE>
        | batch size | samples/s | per-step spread |
        |---:|---:|---:|
        | 8 | 900 | 850–950 |
        | 64 | 5,000 | n/a |
    """
    tp = data.get("throughput") or {}
    rates = tp.get("samples_per_s") or {}
    if not rates:
        return []
    iqr = tp.get("samples_per_s_iqr") or {}
    device = f" on {tp['device']}" if tp.get("device") else ""
    lead = f"Training throughput measured by the probe{device}"
    if iqr:
        lead += (
            ": each step timed alone after untimed warm-up steps; samples/s at the median step, and the "
            "interquartile range of the per-step rates"
        )
    out = ["", "## Throughput", "", lead + ".", ""]
    if iqr:
        out += ["| batch size | samples/s | per-step spread |", "|---:|---:|---:|"]
        out += [f"| {b} | {_n(r, ',.0f')} | {_span(iqr.get(b))} |" for b, r in rates.items()]
    else:
        out += ["| batch size | samples/s |", "|---:|---:|"]
        out += [f"| {b} | {_n(r, ',.0f')} |" for b, r in rates.items()]
    return out


def compute_optimal_lines(data: dict[str, Any]) -> list[str]:
    """The batch sizes that reach the target in the least device and wall time, or why there are none."""
    co = data.get("compute_optimal") or {}
    out = ["", "## Compute-optimal batch size", ""]
    if not co:
        return []
    if "error" in co:
        return [*out, f"Not computed: {co['error']}."]
    n_workers = co.get("n_workers", 1)
    choices = [("least device time, 1 worker", co["device"])]
    if n_workers > 1:  # on one worker the wall-time choice is the device-time one
        choices.append((f"least wall time, {n_workers} workers", co["wall"]))
    out += [
        f"{co.get('summary', '')} (time from the S(B) fit and the probe's measured throughput).",
        "",
        "| choice | batch size | 90% interval | steps | 90% interval | samples | seconds | at range edge | "
        "extrapolated |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, c in choices:
        cells = [label, _n(c.get("batch_size")), _span(c.get("batch_size_ci")), _n(c.get("steps"), ",.0f")]
        cells += [_span(c.get("steps_ci")), _n(c.get("samples"), ",.0f"), _n(c.get("seconds"), ".3g")]
        cells += ["yes" if c.get("at_range_edge") else "no", "yes" if c.get("extrapolated") else "no"]
        out.append("| " + " | ".join(cells) + " |")
    cb = data.get("critical_batch") or {}
    if "batch_max" in cb:
        against = against_the_fit(cb, int(co["device"]["batch_size"]), cb.get("advice_from") == "measured")
        if against:
            out += ["", against.strip()]
    return out
