"""Progress bars of ``bstune run`` and ``bstune probe``, run through the real entry point: on with
``--progress``, off with ``--no-progress``, and by default only when stderr is a terminal."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli.cli_runner import ForkedCli
from tests.cli.test_bad_inputs import FILES

PHASES = (
    "probe: LR range test",
    "probe: B_simple trajectory",
    "probe: B_simple measurement",
    "probe: throughput ladder",
)


def _run(cli: ForkedCli, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli.completed(list(args), folder)  # stderr is a file, not a terminal


@pytest.mark.slow
def test_run_shows_the_probe_phases_and_the_re_scoring_only_when_asked(tmp_path: Path, forked_cli: ForkedCli) -> None:
    (tmp_path / "good.py").write_text(FILES["good.py"])
    (tmp_path / "ok.yaml").write_text(FILES["ok.yaml"])
    args = ("run", "good.py", "--space", "ok.yaml", "--trials", "2", "--budget-samples", "640")
    args += ("--rescore-top", "1", "--rescore-seeds", "1")
    shown = _run(forked_cli, tmp_path, *args, "--progress")
    assert shown.returncode == 0, shown.stderr
    for phase in (*PHASES, "re-scoring"):
        assert phase in shown.stderr, f"{phase!r} not in:\n{shown.stderr}"
    for quiet in ((), ("--no-progress",)):  # by default off: stderr is not a terminal here
        proc = _run(forked_cli, tmp_path, *args, *quiet)
        assert proc.returncode == 0, proc.stderr
        assert not any(p in proc.stderr for p in (*PHASES, "re-scoring", "%|")), proc.stderr


@pytest.mark.slow
def test_probe_shows_its_phases_when_asked(tmp_path: Path, forked_cli: ForkedCli) -> None:
    (tmp_path / "good.py").write_text(FILES["good.py"])
    (tmp_path / "ok.yaml").write_text(FILES["ok.yaml"])
    shown = _run(forked_cli, tmp_path, "probe", "good.py", "--space", "ok.yaml", "--progress")
    assert shown.returncode == 0, shown.stderr
    assert all(p in shown.stderr for p in PHASES), shown.stderr
    quiet = _run(forked_cli, tmp_path, "probe", "good.py", "--space", "ok.yaml")
    assert quiet.returncode == 0 and "%|" not in quiet.stderr, quiet.stderr
