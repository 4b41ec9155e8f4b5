"""The lock a process counts a study's trials and takes one under, across processes (bstune.study._trial_taking)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bstune.study._trial_taking import TakeLock

_HOLD = """
import sys, time
from bstune.study._trial_taking import TakeLock
lock = TakeLock(sys.argv[1])
assert lock.take()
print("held", flush=True)
time.sleep(600)
"""


def test_another_process_holding_it_keeps_it_until_that_process_dies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        waiting = TakeLock(url, patience=0.3)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="bstune"):
            assert not waiting.take() and not waiting.held  # patience ran out: it goes on without the lock
        assert time.monotonic() - started >= 0.3
        assert "another process on this study holds it" in caplog.text
    finally:
        holder.kill()  # SIGKILL: no chance to let go; the OS releases the lock with the process
        holder.wait()
    assert waiting.take() and waiting.held
    waiting.let_go()
    waiting.let_go()  # twice is harmless
    assert not waiting.held


def test_a_journal_file_is_locked_beside_it_and_a_server_or_memory_not(tmp_path: Path) -> None:
    journal = TakeLock(f"journal:{tmp_path}/x.log")
    assert journal.path == tmp_path / "x.log.lock" and journal.take()
    assert journal.take()  # taking it again while held: still held, no deadlock with itself
    journal.let_go()
    for url in ("postgresql://host/db", "sqlite:///:memory:", None):
        lock = TakeLock(url)
        assert lock.path is None and not lock.take() and not lock.held


def test_a_folder_it_cannot_write_gives_no_lock_and_no_error(tmp_path: Path) -> None:
    folder = tmp_path / "missing"  # the lock file cannot be created there
    assert not TakeLock(f"sqlite:///{folder}/study.db").take()
