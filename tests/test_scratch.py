"""The scratch folder: removed at exit, swept after a kill, never taken from a process that lives."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from bstune import _scratch
from bstune._scratch import PREFIX, _own_prefix, remove_abandoned
from tests.reliability.conftest import python_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only")

MAKES_ONE = textwrap.dedent(
    """
    import os, sys, time
    from bstune._scratch import scratch_folder
    folder = scratch_folder()
    (folder / "payload.pickle").write_bytes(b"the user's data")
    if sys.argv[1] == "fork":  # a forked child that exits through atexit leaves its parent's folder
        pid = os.fork()
        if pid == 0:
            sys.exit(0)
        os.waitpid(pid, 0)
    print(folder, flush=True)
    if sys.argv[1] in ("hold", "fork"):
        time.sleep(600)
    """
)


def start(tmp_path: Path, how: str) -> tuple[subprocess.Popen[str], Path]:
    env = python_env() | {"TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", MAKES_ONE, how], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, f"the child printed nothing (exit {proc.wait()})"
    return proc, Path(line)


def test_a_normal_exit_removes_the_folder(tmp_path: Path) -> None:
    proc, folder = start(tmp_path, "exit")
    assert proc.wait(timeout=60) == 0
    assert folder.parent == tmp_path and folder.name.startswith(PREFIX)
    assert not folder.exists()


def test_a_killed_process_folder_is_swept_and_a_live_one_is_not(tmp_path: Path) -> None:
    killed, dead_folder = start(tmp_path, "hold")
    live, live_folder = start(tmp_path, "fork")  # its forked child has exited: the folder is still the parent's
    try:
        assert live_folder.exists(), "a forked child's exit removed its parent's folder"
        os.kill(killed.pid, signal.SIGKILL)  # no exit handlers run
        killed.wait(timeout=60)
        assert (dead_folder / "payload.pickle").exists()
        assert remove_abandoned(tmp_path) == [dead_folder]
        assert not dead_folder.exists()
        assert (live_folder / "payload.pickle").exists()
    finally:
        live.kill()
        live.wait(timeout=60)
    assert remove_abandoned(tmp_path) == [live_folder]


def test_a_folder_without_its_owner_file_is_left_alone(tmp_path: Path) -> None:
    making = tmp_path / f"{_own_prefix()}being-made"  # between mkdtemp and the owner file's rename
    making.mkdir()
    (making / ".locking").touch()
    assert remove_abandoned(tmp_path) == []
    assert making.exists()


def test_another_machines_folder_is_left_alone(tmp_path: Path) -> None:
    """A temp folder shared between machines may keep locks per machine: their folders are theirs to sweep."""
    theirs = tmp_path / f"{PREFIX}another-host-abc"
    theirs.mkdir()
    (theirs / ".owner").touch()  # unlocked here, which says nothing of a process on that machine
    assert remove_abandoned(tmp_path) == [] and theirs.exists()


def test_a_file_system_without_locks_still_gets_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On NFS mounted nolock, flock fails (ENOLCK): every script load and payload failed with it."""

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(_scratch, "_folder", None)
    monkeypatch.setattr(_scratch, "_owner_fd", None)
    monkeypatch.setattr(_scratch.fcntl, "flock", no_locks)
    folder = _scratch.scratch_folder()
    assert folder.is_dir() and folder.parent == tmp_path and not (folder / ".owner").exists()
    assert remove_abandoned(tmp_path) == [] and folder.exists()  # no lock to read: not swept
