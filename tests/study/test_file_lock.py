"""The flock beside a study's storage: held, waited for with a patience, let go."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import pytest

from bstune.study._file_lock import FileLock

pytestmark = pytest.mark.skipif(importlib.util.find_spec("fcntl") is None, reason="no fcntl (Windows): no lock")


def test_a_second_holder_waits_out_its_patience_and_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / ".study.db.bstune.lock"
    first, second = FileLock(path), FileLock(path, patience=0.2, waiting="another process holds it")
    assert first.take()
    with caplog.at_level(logging.INFO, logger="bstune.study._file_lock"):
        assert not second.take() and not second.held
    assert "another process holds it" in caplog.text and "waited 0.2 s for" in caplog.text  # not "waited 0 s"
    first.let_go()
    assert second.take()
    second.let_go()


def test_a_with_block_inside_a_hold_leaves_the_hold_in_place(tmp_path: Path) -> None:
    """A reviewer: `with lock:` on a lock already held let it go at the block's end."""
    lock, other = FileLock(tmp_path / ".x.lock"), FileLock(tmp_path / ".x.lock", patience=0.1)
    assert lock.take()
    with lock:
        assert lock.held
    assert lock.held and not other.take()
    lock.let_go()
    with lock:
        assert not other.take()
    assert not lock.held and other.take()


def test_a_ctrl_c_while_waiting_closes_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ".x.lock"
    holder = FileLock(path)
    assert holder.take()
    opened: list[int] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **k: opened.append(real_open(*a, **k)) or opened[-1])

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("bstune.study._file_lock.time.sleep", interrupt)
    with pytest.raises(KeyboardInterrupt):
        FileLock(path).take()
    (fd,) = opened
    with pytest.raises(OSError):
        os.fstat(fd)  # closed
    holder.let_go()
