"""Processes bstune spawns: what they are handed, and a Ctrl-C that comes while they start."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from typing import Any

import pytest

from bstune._spawn import children_hold_sigint, pack, take_held_sigint, unpack

HANDLED = 7  # the child's exit code when its own handler got the SIGINT


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
        with children_hold_sigint():
            proc.start()
    else:
        proc.start()
    assert ready.wait(60)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGINT)
    proc.join(60)
    assert proc.exitcode is not None
    return proc.exitcode


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks (Windows)")
def test_a_sigint_while_a_child_starts_waits_for_its_handler() -> None:
    assert _started(hold=True) == HANDLED  # not lost, and not raised mid-start
    # without the hold, the same SIGINT lands in the middle of the start as a KeyboardInterrupt (exit 1, traceback)
    assert _started(hold=False) == 1


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks (Windows)")
def test_the_hold_ends_with_the_block_in_this_process() -> None:
    with children_hold_sigint():
        assert signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_pack_round_trips() -> None:
    assert unpack(pack({"batch_size": 32, "lr": [0.1]})) == {"batch_size": 32, "lr": [0.1]}
