"""The terminal summary ``bstune run`` and ``bstune report`` print: its trial table and best-config line."""

from __future__ import annotations

import json
import re
from typing import Any

from bstune.study._summary import format_summary
from tests.reliability.conftest import ROOT


def _sample() -> dict[str, Any]:
    """The committed sample study: 8 completed and 12 pruned trials, re-scored, trial 16 recommended."""
    result: dict[str, Any] = json.loads((ROOT / "examples" / "digits_report" / "result.json").read_text())
    return result


def _table(summary: str) -> list[tuple[int, str]]:
    rows = summary.split("samples\n", 1)[1].split("best config", 1)[0]
    return [(int(m[1]), m[2]) for m in re.finditer(r"^\s*(\d+)\s+([a-z]+)\s", rows, flags=re.MULTILINE)]


def test_a_pruned_trials_early_value_never_ranks_above_a_completed_trials_final_one() -> None:
    """A newcomer read a pruned trial (0.2123 at 1,728 samples) listed above a completed one (0.2495)."""
    result = _sample()
    pruned = next(t for t in result["trials"] if t["status"] == "pruned")
    pruned["value"] = 0.01  # better than every completed trial's value, but taken early
    rows = _table(format_summary(result, top=None))
    statuses = [s for _, s in rows]
    assert statuses == sorted(statuses, key=lambda s: s != "completed")  # completed first, then pruned
    completed = [n for n, s in rows if s == "completed"]
    values = {t["number"]: t["value"] for t in result["trials"]}
    assert [values[n] for n in completed] == sorted(values[n] for n in completed)
    assert rows[len(completed)][0] == pruned["number"]  # the best of the pruned, after every completed trial


def test_the_best_config_line_says_its_value_is_a_mean_over_seeds_when_re_scored() -> None:
    result = _sample()
    line = format_summary(result).splitlines()[-1]
    assert line.startswith("best config (trial 16: val_loss 0.0773, the mean of 3 seeds): batch_size=")
    chosen = next(r for r in result["rescored"] if r["trial"] == 16)
    chosen["fresh_mean"] = 0.0812  # a result written since it is kept: the new seeds alone
    line = format_summary(result).splitlines()[-1]
    assert line.startswith(
        "best config (trial 16: val_loss 0.0773, the mean of 3 seeds (0.0812 over its 2 new seeds, less optimistic)"
    )
    result["rescored"] = []  # not re-scored: the trial's own value
    alone = format_summary(result).splitlines()[-1]
    assert alone.startswith("best config (trial 16: val_loss 0.0773; 0.0746 at the last evaluation): ")


def test_one_re_scored_trial_at_one_seed_is_said_in_the_singular() -> None:
    result = _sample()
    result["rescored"] = result["rescored"][:1]
    result["rescored"][0]["seeds"] = result["rescored"][0]["seeds"][:1]
    assert "re-scored the best trial at 1 more seed; recommended trial" in format_summary(result)


def test_a_direct_b_crit_measurement_is_on_the_console_with_its_cost() -> None:
    """A newcomer's --critical-batch measure ran 4.5 minutes and the console said nothing of B_crit or its cost."""
    result = _sample()
    result["critical_measured"] = {
        "summary": "measured directly (branches at 2 seeds): B_crit ≈ 374 (90% CI 228–661) from 7 runs at 4 batch "
        "sizes 16–1024 that reached the target. B_crit over training, from 0 samples: 120 (90% CI 80–200). cost "
        "494,158 samples (61.8x one trial's budget).",
        "cost_samples": 494_158,
        "cost_budgets": 61.77,
    }
    summary = format_summary(result)
    assert "critical batch size measured directly (branches at 2 seeds): B_crit ≈ 374 (90% CI 228–661)" in summary
    assert "cost 494,158 samples (61.8x one trial's budget, not in the total above)" in summary
    assert "B_crit over training" not in summary  # the trajectory stays in the report


def test_no_large_batch_ceiling_is_claimed_where_no_test_ran_there() -> None:
    """A newcomer's probe reached lr.max at B=22 and ran no range test at B=176 (a larger batch only raises the
    ceiling), yet the console and the report gave a ceiling "at B=176" as if measured there."""
    from bstune.report._markdown import _probe_and_prior

    result = _sample()
    probe = result["probe"]
    probe.update(lr_ceiling_at_max=True, lr_ceiling_large_at_max=True, lr_ceiling_large=probe["lr_ceiling"])
    big = probe["large_batch"]
    assert big > probe["batch_size"]
    line = next(x for x in format_summary(result).splitlines() if x.startswith("probe: "))
    assert (
        f"no test at B={big} (a larger batch only raises it)" in line and f"at B={big}" not in line.split("no test")[0]
    )
    text = " ".join(_probe_and_prior(probe, None))
    assert f"none ran at {big}: a larger batch only raises the ceiling" in text and f"at {big};" not in text


def test_an_unresolved_b_simple_is_said_not_a_crash_that_loses_the_study() -> None:
    """A probe whose |G|² is not resolved from zero keeps B_simple as null in result.json: the summary (printed by
    ``bstune run`` and ``bstune report``) raised a TypeError on it, after every trial had run."""
    result = _sample()
    result["probe"].update(b_simple=None, b_simple_ci=[0.0, None])
    line = next(x for x in format_summary(result).splitlines() if x.startswith("probe: "))
    assert line.startswith("probe: B_simple unresolved (90% CI 0 .. inf) at lr ")


def test_queued_retries_are_not_counted_as_trials_in_the_header() -> None:
    """After a resume with --trials 4, the header said '5 trials (and 2 interrupted)' while the table said
    4 completed, 2 interrupted and 1 waiting: the queued retry that never ran was counted as a trial."""
    result = _sample()
    n = len(result["trials"])
    result["trials"][-1] = result["trials"][-1] | {"status": "waiting"}
    result["trials"][-2] = result["trials"][-2] | {"status": "interrupted"}
    header = format_summary(result).splitlines()[0]
    assert f": {n - 2} trials (and 1 interrupted, 1 waiting), " in header


def test_the_hint_to_list_all_trials_quotes_a_folder_with_spaces() -> None:
    """A newcomer's --out 'runs/o u t' got a hint that, pasted, named three folders."""
    summary = format_summary(_sample(), folder="/tmp/runs/o u t")
    assert "`bstune report '/tmp/runs/o u t' --all-trials` lists all" in summary
