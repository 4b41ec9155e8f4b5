"""Where and on what a benchmark ran: CPU model, git revision, load. Shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git(*args: str) -> str | None:
    """Output of a git command in the repository, or None where git cannot answer."""
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages, rounded, where the OS reports them."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_facts(script: str, argv: list[str]) -> dict[str, object]:
    """What a results file says about its run: date, command, machine and code (``script`` as typed, e.g.
    ``benchmarks/loader.py``)."""
    import datetime as dt
    import shlex

    import torch

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", script, *argv]),
        "machine": {
            "cpu_model": cpu_model(),
            "logical_cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "git_commit": git("rev-parse", "--short=10", "HEAD"),
        "git_dirty_bstune": bool(git("status", "--porcelain", "--", "bstune")),
    }


def run_child(script: str, spec: dict[str, Any], pythonpath: Path) -> dict[str, Any]:
    """Run ``script --child SPEC`` in a fresh Python (one OpenMP thread, ``pythonpath`` first on the path);
    the JSON object its last stdout line holds."""
    import json
    import sys

    env = os.environ | {"PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, script, "--child", json.dumps(spec)], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {spec} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
