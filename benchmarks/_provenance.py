"""Where and on what a benchmark ran: CPU model, git revision, load. Shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

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
