"""The terminal summary of a study, printed by ``bstune run`` and ``bstune report``."""

from __future__ import annotations

from typing import Any

from bstune.metrics import Direction

__all__ = ["format_summary"]


def format_summary(result: dict[str, Any]) -> str:
    """A terminal summary of a study's result.json (``StudyResult.to_dict()``): probe, prior, trials, best config."""
    lines = [
        f"study {result['study_name']} ({result['mode']} mode): {len(result['trials'])} trials, "
        f"{result['samples_total']:,} training samples in all (probe {result['samples_probe']:,}, "
        f"re-scoring {result.get('samples_rescore', 0):,})"
    ]
    if result.get("rescored"):
        lines.append(
            f"re-scored the {len(result['rescored'])} best trials at {len(result['rescored'][0]['seeds'])} more "
            f"seeds; recommended trial {result.get('best_trial')}, the best mean"
        )
    probe, prior = result.get("probe"), result.get("prior")
    if probe and prior:
        lo, hi = probe["b_simple_ci"]
        hi_text = "inf" if hi is None else f"{hi:.4g}"
        lines.append(
            f"probe: B_simple {probe['b_simple']:.4g} (90% CI {lo:.4g} .. {hi_text}) at lr "
            f"{probe['lr_probe']:.3g}; LR ceiling {probe['lr_ceiling']:.3g} at B={probe['batch_size']}, "
            f"{probe['lr_ceiling_large']:.3g} at B={probe['large_batch']}"
        )
        lines.append(
            f"prior: batch sizes {prior['batch_low']}..{prior['batch_high']}, "
            f"lr rule anchored at eta*({prior['b_ref']}) = {prior['lr_ref']:.3g}"
        )
    counts: dict[str, int] = {}
    for t in result["trials"]:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    lines.append("trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    sign = Direction(result["direction"]).sign
    ranked = sorted((t for t in result["trials"] if t["value"] is not None), key=lambda t: sign * t["value"])
    # the temperature column holds what the trial recorded: lr/(B(1-m)), the effective temperature
    lines.append(
        f"{'#':>4} {'status':>9} {'batch':>6} {'lr':>9} {'lr/(B(1-m))':>11} {result['objective']:>10} {'samples':>9}"
    )
    for t in ranked[:10]:
        temp = "n/a" if t.get("temperature") is None else f"{t['temperature']:.3g}"
        lines.append(
            f"{t['number']:>4} {t['status']:>9} {t['batch_size']:>6} {t['lr']:>9.3g} "
            f"{temp:>11} {t['value']:>10.4f} {t['samples']:>9,}"
        )
    lines.append("     lr/(B(1-m)): effective temperature, m = SGD momentum (0 for Adam-family optimizers)")
    settings = {k: v for k, v in result["best_config"].items() if k != "temperature"}  # derived, in older results
    best = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())
    lines.append(f"best config ({result['objective']} {result['best_value']:.4f}): {best}")
    return "\n".join(lines)
