"""What ``bstune run`` and ``bstune report`` print and write, through the real entry point in a process of its own
(a fork of one that imported the command line: tests/cli/cli_runner.py)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.cli.cli_runner import ForkedCli
from tests.cli.test_bad_inputs import TINY_TASK
from tests.reliability.conftest import ROOT

pytestmark = pytest.mark.slow


def bstune(cli: ForkedCli, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return cli.completed(list(args), cwd)


def tiny_run(cli: ForkedCli, folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``bstune run`` of a tiny task in ``folder``: 2 baseline trials of 640 samples into ``folder/out``."""
    (folder / "good.py").write_text(TINY_TASK)
    (folder / "ok.yaml").write_text("name: s\nbatch_size: {min: 8, max: 64}\n")
    return bstune(
        cli,
        *("run", "good.py", "--space", "ok.yaml", "--out", "out", "--mode", "baseline", "--trials", "2"),
        *("--budget-samples", "640", "--rescore-top", "0", *extra),
        cwd=folder,
    )


def test_run_writes_the_report_and_says_where(tmp_path: Path, forked_cli: ForkedCli) -> None:
    proc = tiny_run(forked_cli, tmp_path, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert json.loads((out / "report.json").read_text())["recommended"]["batch_size"] > 0
    assert (out / "report.md").read_text().startswith("# bstune report")
    assert "<html" in (out / "report.html").read_text()
    assert f"report: {out}/report.md (also report.html, report.json); `bstune report {out}`" in proc.stdout
    assert "bstune: stderr is not a terminal: a line per finished trial" not in proc.stderr  # --no-progress: quiet


def test_run_without_a_terminal_prints_a_line_per_finished_trial(tmp_path: Path, forked_cli: ForkedCli) -> None:
    """A newcomer's 21-minute study printed nothing with stderr redirected: no bars, no lines, until its end."""
    proc = tiny_run(forked_cli, tmp_path)
    assert proc.returncode == 0, proc.stderr
    trials = json.loads((tmp_path / "out" / "result.json").read_text())["trials"]
    for t in trials:
        line = f"trial {t['number']} {t['status']}: B={t['batch_size']}, lr={t['lr']:.3g}, val_loss={t['value']:.4g}"
        assert line + f", {t['samples']:,} samples" in proc.stderr.splitlines(), proc.stderr


def test_run_takes_fewer_milestones_for_a_small_budget(tmp_path: Path, forked_cli: ForkedCli) -> None:
    """100 samples at batch size 64 give 2 steps: too few for the default 9 milestones, enough for 2."""
    (tmp_path / "good.py").write_text(TINY_TASK)
    (tmp_path / "ok.yaml").write_text("name: s\nbatch_size: {min: 8, max: 64}\n")
    args = ("run", "good.py", "--space", "ok.yaml", "--mode", "baseline", "--trials", "2", "--budget-samples", "100")
    refused = bstune(forked_cli, *args, "--no-progress", cwd=tmp_path)
    assert refused.returncode == 2 and "for its 9 milestones" in refused.stderr and "--n-evals" in refused.stderr
    proc = bstune(
        forked_cli, *args, "--n-evals", "2", "--rescore-top", "0", "--out", "out", "--no-progress", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    trials = json.loads((tmp_path / "out" / "result.json").read_text())["trials"]
    assert trials and all(1 <= len(t["history"]) <= 2 for t in trials if t["status"] == "completed")


def result_with_failures(folder: Path) -> Path:
    """The committed sample study (20 trials), with 3 of them failed and 2 diverged (no value)."""
    result = json.loads((ROOT / "examples" / "digits_report" / "result.json").read_text())
    unlucky = [t for t in result["trials"] if t["number"] not in (result["best_trial"], 0)][:5]
    for t, status in zip(unlucky, ["failed"] * 3 + ["diverged"] * 2, strict=True):
        t.update(status=status, value=None, message=f"{status} on purpose")
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps(result))
    return folder


def rows(stdout: str) -> list[int]:
    """The trial numbers of the summary's table."""
    table = stdout.split("samples\n", 1)[1].split("best config", 1)[0]
    return [int(m.group(1)) for m in re.finditer(r"^\s*(\d+)\s+[a-z]+\s", table, flags=re.MULTILINE)]


def test_the_trial_table_says_what_it_leaves_out_and_lists_all_on_request(
    tmp_path: Path, forked_cli: ForkedCli
) -> None:
    folder = result_with_failures(tmp_path / "study")
    cut = bstune(forked_cli, "report", str(folder), "--out", str(tmp_path / "r1"), cwd=tmp_path)
    assert cut.returncode == 0, cut.stderr
    assert len(rows(cut.stdout)) == 10
    note = f"... 10 more trials (2 diverged, 3 failed, 5 pruned) not shown; `bstune report {folder} --all-trials`"
    assert note in cut.stdout

    every = bstune(forked_cli, "report", str(folder), "--all-trials", "--out", str(tmp_path / "r2"), cwd=tmp_path)
    assert every.returncode == 0, every.stderr
    assert sorted(rows(every.stdout)) == list(range(20)) and "not shown" not in every.stdout
    assert re.search(r"failed\s+\d+\s+\S+\s+\S+\s+-\s", every.stdout)  # a failed trial's row, without a value


def test_a_result_that_cannot_be_written_leaves_the_summary_and_the_command_that_writes_it(
    tmp_path: Path, forked_cli: ForkedCli
) -> None:
    """A full disk at the end printed an OSError traceback after the whole study (and could leave a truncated
    result.json). Here ``result.json`` is a folder in the way: the write fails as it would on a full disk."""
    (tmp_path / "out" / "result.json").mkdir(parents=True)
    proc = tiny_run(forked_cli, tmp_path, "--no-progress")
    assert proc.returncode == 1, proc.stderr
    assert "best config (trial" in proc.stdout
    (line,) = proc.stderr.splitlines()
    assert line.startswith(
        f"bstune: could not write result.json into {tmp_path / 'out'}: Is a directory; the study is kept"
    )
    assert line.endswith(" --resume writes it")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]  # no half-written file left
