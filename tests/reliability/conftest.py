"""Helpers of the reliability suite: real storages, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


@pytest.fixture(params=["sqlite", "journal"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage on a real file: a SQLite database or an Optuna journal."""
    return f"sqlite:///{tmp_path}/study.db" if request.param == "sqlite" else f"journal:{tmp_path}/study.log"


def python_env() -> dict[str, str]:
    """The environment for a child Python that imports this checkout's bstune and tests."""
    path = os.environ.get("PYTHONPATH")
    return os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def start_worker(
    storage: str,
    n_trials: int,
    out: Path,
    gate: Path | None = None,
    budget: int | None = None,
    function: bool = False,
    mode: str = "baseline",
    hold: Path | None = None,
) -> subprocess.Popen[bytes]:
    """A study process (:mod:`tests.reliability.worker`) on ``storage``; its stderr is kept for messages.

    With ``gate``, the process imports and builds its task, writes ``<gate>.ready`` and
    opens the study only once ``gate`` exists: a test can then make it open the study at
    a chosen moment, whatever the machine's load does to interpreter start-up. ``budget``
    sets the samples of a trial (default 4000). ``function``: the study tunes the blobs problem
    as a training function (:func:`tests.reliability.worker.train_blobs`), not as a task; ``mode``:
    the study's mode (``"prior"``: it probes first). ``hold``: the process stops inside a trial once three
    have completed and writes that trial's number there (see :func:`tests.reliability.worker.hold_inside_a_trial`).
    """
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.worker", storage, str(n_trials), str(out)],
        cwd=ROOT,
        env=python_env()
        | ({"BSTUNE_TEST_GATE": str(gate)} if gate else {})
        | ({"BSTUNE_TEST_BUDGET": str(budget)} if budget else {})
        | ({"BSTUNE_TEST_FUNCTION": "1"} if function else {})
        | ({"BSTUNE_TEST_HOLD": str(hold)} if hold else {})
        | {"BSTUNE_TEST_MODE": mode},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for(what: str, poll: Callable[[], T | None], procs: list[subprocess.Popen[bytes]], timeout: float = 300) -> T:
    """Poll until ``poll()`` returns a value; fail (with the processes' stderr) on timeout or if one exits early."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                err = p.stderr.read().decode() if p.stderr else ""
                pytest.fail(f"a worker exited ({p.returncode}) before {what}: {err[-2000:]}")
        value = poll()
        if value is not None:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A real live process on this host that runs nothing of ours."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()
