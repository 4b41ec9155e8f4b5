"""A Ctrl-C held while modules import (bstune._interrupts), where the CLI and the report writer import them."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import pytest

from bstune._interrupts import ctrl_c_held


def test_a_ctrl_c_inside_the_block_is_raised_when_it_ends() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), ctrl_c_held():
        signal.raise_signal(signal.SIGINT)
        done.append("the rest of the block")  # not cut short
    assert done == ["the rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with ctrl_c_held():  # none pressed: nothing raised
        pass


def test_a_handler_of_the_programs_own_gets_the_press_as_it_comes() -> None:
    got: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        with ctrl_c_held():
            signal.raise_signal(signal.SIGINT)
            assert got == [signal.SIGINT]  # answered inside the block, by its own handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_off_the_main_thread_the_block_runs_as_it_is() -> None:
    seen: list[object] = []

    def run() -> None:
        with ctrl_c_held():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]  # left as it was (a thread cannot set handlers)


def test_a_ctrl_c_while_the_report_loads_matplotlib_is_raised_after_the_import(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`bstune run` answers a Ctrl-C while writing the report with a line saying the study is kept; inside
    matplotlib's C extensions the press was an ImportError and a traceback instead."""
    from bstune import _command_io

    class CtrlC:
        def find_spec(self, name: str, *args: object) -> None:
            if name == "bstune.report._plots":
                signal.raise_signal(signal.SIGINT)
            return None

    monkeypatch.delitem(sys.modules, "bstune.report._plots", raising=False)
    monkeypatch.setattr(sys, "meta_path", [CtrlC(), *sys.meta_path])
    with pytest.raises(KeyboardInterrupt):
        _command_io.write_report(None, str(tmp_path))  # type: ignore[arg-type]  # interrupted before it is read
    assert "bstune.report._plots" in sys.modules and list(tmp_path.iterdir()) == []
