"""Processes bstune spawns: what they are handed, and a Ctrl-C that comes while they start."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bstune import _scratch
from bstune._spawn import pack, payload_file, start_holding_sigint, take_held_sigint, take_payload_file, unpack
from bstune.errors import ConfigError

HANDLED = 7  # the child's exit code when its own handler got the SIGINT
posix_only = pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks (Windows)")


def _starts_slowly(ready: Any) -> None:
    """A child that takes a second to start (as one importing torch does) before its handler is in place."""
    ready.set()
    time.sleep(1.0)  # the parent's SIGINT comes now
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(HANDLED))
    take_held_sigint()
    time.sleep(5.0)
    sys.exit(0)


def _started(*, hold: bool) -> int:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_starts_slowly, args=(ready,))
    if hold:
        start_holding_sigint([proc.start])
    else:
        proc.start()
    assert ready.wait(60)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGINT)
    proc.join(60)
    assert proc.exitcode is not None
    return proc.exitcode


@posix_only
def test_a_sigint_while_a_child_starts_waits_for_its_handler() -> None:
    assert _started(hold=True) == HANDLED  # not lost, and not raised mid-start
    # without the hold, the same SIGINT lands in the middle of the start as a KeyboardInterrupt (exit 1, traceback)
    assert _started(hold=False) == 1


@posix_only
def test_the_callers_thread_keeps_sigint_unblocked() -> None:
    start_holding_sigint([lambda: None])
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def _never_runs(blob: bytes) -> None:
    raise AssertionError("the child was to die before reading its arguments")


class Hung(Exception):
    pass


def _hung(signum: int, frame: Any) -> None:
    raise Hung("start_holding_sigint did not give way")


@pytest.fixture
def child_dies_unread() -> Iterator[multiprocessing.process.BaseProcess]:
    """A spawned process whose interpreter exits at once, never reading its 1 MB of arguments: its ``start``
    blocks for good in the write (as with a child that fails an import before reading them all). A watchdog
    fails the test after 60 s rather than leave it hanging."""
    ctx = multiprocessing.get_context("spawn")
    python = multiprocessing.spawn.get_executable()
    ctx.set_executable("/bin/true")
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(60)
    try:
        yield ctx.Process(target=_never_runs, args=(b"x" * 1_000_000,), daemon=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        ctx.set_executable(python)


@posix_only
@pytest.mark.skipif(not os.path.exists("/bin/true"), reason="no /bin/true")
def test_a_ctrl_c_is_taken_while_a_start_never_returns(child_dies_unread: multiprocessing.process.BaseProcess) -> None:
    """Under a flag-setting handler, as bstune's trial workers are started: the wait ends once it is set."""
    ctrl_c = threading.Event()
    threading.Timer(0.5, ctrl_c.set).start()
    began = time.monotonic()
    start_holding_sigint([child_dies_unread.start], stopping=ctrl_c.is_set, patience=0.5)
    assert time.monotonic() - began < 10
    assert child_dies_unread.pid is None  # never recorded as started: nothing for the caller to stop


@posix_only
@pytest.mark.skipif(not os.path.exists("/bin/true"), reason="no /bin/true")
def test_a_raised_ctrl_c_goes_on_while_a_start_never_returns(
    child_dies_unread: multiprocessing.process.BaseProcess,
) -> None:
    """Under Python's own handler (the re-scoring pool, data-parallel ranks): a real SIGINT to this process."""
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        start_holding_sigint([child_dies_unread.start], patience=0.5)
    assert time.monotonic() - began < 10


def test_nothing_is_started_after_a_stop() -> None:
    started: list[int] = []
    stop = threading.Event()

    def first() -> None:
        started.append(1)
        stop.set()  # a Ctrl-C while this start is under way
        time.sleep(1.0)

    start_holding_sigint([first, lambda: started.append(2)], stopping=stop.is_set)
    assert started == [1]


def test_a_failed_start_raises_in_the_callers_thread() -> None:
    def fails() -> None:
        raise OSError("no such executable")

    with pytest.raises(OSError, match="no such executable"):
        start_holding_sigint([fails])


def in_temp(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's temp folder is ``folder``, and its scratch folder not yet made."""
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setattr(_scratch, "_folder", None)
    monkeypatch.setattr(_scratch, "_owner_fd", None)


def test_a_payload_file_is_private_and_gone_once_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_temp(tmp_path, monkeypatch)
    path = payload_file(pack({"x": list(range(10))}), "trial-worker")
    # in this process's scratch folder, which a kill leaves for the next bstune process to sweep (test_scratch.py)
    assert Path(path).parent.parent == tmp_path and Path(path).parent.name.startswith(_scratch.PREFIX)
    assert Path(path).name.startswith("trial-worker-")
    if os.name == "posix":
        assert Path(path).stat().st_mode & 0o777 == 0o600  # the user's task and data: theirs alone
    assert unpack(take_payload_file(path)) == {"x": list(range(10))}
    assert not Path(path).exists()


def test_a_temp_folder_without_room_is_a_config_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_temp(tmp_path / "missing", monkeypatch)  # as full or read-only, to mkdtemp
    with pytest.raises(ConfigError, match=r"temp folder: could not write the task \(\d+ bytes.*missing.*TMPDIR"):
        payload_file(pack(list(range(100))), "trial-worker")


def test_pack_round_trips() -> None:
    assert unpack(pack({"batch_size": 32, "lr": [0.1]})) == {"batch_size": 32, "lr": [0.1]}


CHILD_OF_MAIN = """
import functools
import multiprocessing
import pickle
import sys

from bstune._spawn import pack, unpack_in_child


class Blobs:
    def __init__(self, n):
        self.n = n


@functools.cache
def cached():  # shipped by name: in the child, the re-import's own, holding the re-import's class
    return Blobs(5)


def tagged(fn):
    @functools.wraps(fn)
    def inner(items):
        return ("tagged", fn(items))

    return inner


@tagged
def collate(items):
    return items


def grandchild(shipped, out):  # a DataLoader worker's part: handed the shipped object by name
    out.put(shipped.n)


def child(blob, out):
    shipped, shipped_collate, guarded, shipped_cached = unpack_in_child(blob)
    main, reimport = sys.modules["__main__"], sys.modules["__mp_main__"]
    ctx = multiprocessing.get_context("spawn")
    inner = ctx.Queue()
    process = ctx.Process(target=grandchild, args=(shipped, inner))
    process.start()
    process.join(60)
    out.put({
        "by name": pickle.loads(pickle.dumps(shipped)).n,
        "main's": main.Blobs is type(shipped),
        "re-import's own": reimport.Blobs is not type(shipped) and pickle.loads(pickle.dumps(shipped_cached())).n,
        "decorated": main.collate is shipped_collate and main.collate([1]) == ("tagged", [1]),
        "guarded": hasattr(main, "Guarded"),
        "in a grandchild": inner.get(timeout=5),
    })


if __name__ == "__main__":
    class Guarded:
        pass

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    worker = context.Process(target=child, args=(pack((Blobs(3), collate, Guarded, cached)), results))
    worker.start()
    print(results.get(timeout=120))
    worker.join(60)
"""


def test_a_spawned_child_makes_the_scripts_classes_that_came_by_value_its_mains_so_they_pickle_by_name(
    tmp_path: Path,
) -> None:
    """Where DataLoader workers spawn (macOS), a trial worker's loop pickled its Dataset by name and failed:
    "Can't pickle <class '__main__.Blobs'>: it's not the same object as __main__.Blobs". A reviewer found the first
    fix's faults: it overwrote the re-import's own class (a cached dataset made there no longer pickled), took the
    undecorated function of a decorated one, and took a class defined under the guard."""
    pytest.importorskip("cloudpickle")
    (tmp_path / "script.py").write_text(CHILD_OF_MAIN)
    done = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(
        {"by name": 3, "main's": True, "re-import's own": 5, "decorated": True, "guarded": False, "in a grandchild": 3}
    )
