"""A Ctrl-C held while modules import (bstune._interrupts), where the CLI and the report writer import them."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import pytest

from bstune._interrupts import ctrl_c_held


def test_a_ctrl_c_inside_the_block_is_raised_when_it_ends(capsys: pytest.CaptureFixture[str]) -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), ctrl_c_held():
        signal.raise_signal(signal.SIGINT)
        done.append("the rest of the block")  # not cut short
    assert done == ["the rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with ctrl_c_held():  # none pressed: nothing raised
        pass


def test_a_second_press_stops_at_once_and_the_first_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    # an import that hangs (a slow network file system) must not hold the terminal
    done = []
    with pytest.raises(KeyboardInterrupt), ctrl_c_held("the test ends"):
        signal.raise_signal(signal.SIGINT)
        done.append("held")
        signal.raise_signal(signal.SIGINT)
        done.append("not reached")
    assert done == ["held"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert capsys.readouterr().err == "bstune: Ctrl-C: stopping once the test ends (press it again to stop now)\n"


def test_a_block_that_fails_after_a_press_ends_as_the_press() -> None:
    # an import cut short raises its own error: the user pressed Ctrl-C, and is answered as having pressed it
    with pytest.raises(KeyboardInterrupt) as caught, ctrl_c_held():
        signal.raise_signal(signal.SIGINT)
        raise ModuleNotFoundError("half a module")
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    with pytest.raises(ModuleNotFoundError), ctrl_c_held():  # no press: its own error
        raise ModuleNotFoundError("a missing module")


def test_a_handler_the_block_installs_stays() -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    try:
        with ctrl_c_held():
            signal.signal(signal.SIGINT, mine)
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
