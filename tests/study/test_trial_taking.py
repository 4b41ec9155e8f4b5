"""The lock a process counts a study's trials and takes one under, across processes (bstune.study._trial_taking)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
    assert journal.path == tmp_path / ".x.log.bstune.lock" and journal.take()
    assert journal.take()  # taking it again while held: still held, no deadlock with itself
    journal.let_go()
    for url in ("postgresql://host/db", "sqlite:///:memory:", None):
        lock = TakeLock(url)
        assert lock.path is None and not lock.take() and not lock.held


def test_a_folder_it_cannot_write_gives_no_lock_and_no_error(tmp_path: Path) -> None:
    folder = tmp_path / "missing"  # the lock file cannot be created there
    assert not TakeLock(f"sqlite:///{folder}/study.db").take()


def test_held_on_a_journal_it_leaves_optunas_own_journal_lock_alone(tmp_path: Path) -> None:
    """The lock was once "<file>.lock", the path Optuna's journal locks with a symlink of its own: every journal
    write then waited 30 s for it and Optuna removed bstune's file, so the lock no longer excluded anyone."""
    import optuna

    from bstune.study import open_storage

    url = f"journal:{tmp_path}/x.log"
    study = optuna.create_study(storage=open_storage(url))
    lock = TakeLock(url)
    assert lock.take()
    started = time.monotonic()
    study.ask()  # a journal write while the lock is held
    assert time.monotonic() - started < 5
    assert lock.path is not None and lock.path.exists()  # still bstune's, still held
    lock.let_go()


def test_only_a_live_other_processs_running_trial_is_a_peers() -> None:
    """A run that had reached n_trials waited for ever on a trial stored as running by its own process (a notebook
    run cut short), and one whose counted trial was a dead peer's returned with fewer than n_trials finished."""
    from optuna.trial import TrialState, create_trial

    from bstune._keys import HEARTBEAT_KEY, OWNER_KEY
    from bstune.study._liveness import Owner
    from bstune.study._trial_taking import peers_running

    now = time.time()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()

        def running(owner: Owner, beat: float) -> Any:
            attrs = {OWNER_KEY: owner.to_dict(), HEARTBEAT_KEY: beat}
            return create_trial(state=TrialState.RUNNING, system_attrs=attrs)

        grace = 600.0
        assert peers_running([running(Owner.of(other.pid), now)], grace, now=now) == 1
        assert peers_running([running(Owner.current(), now)], grace, now=now) == 0  # this process's own
        assert peers_running([running(Owner.of(dead.pid), now)], grace, now=now) == 0  # its process is gone
        assert peers_running([running(Owner.of(other.pid), now - 2 * grace)], grace, now=now) == 0  # stopped
        assert peers_running([create_trial(value=1.0)], grace, now=now) == 0
    finally:
        other.kill()
        other.wait()
