"""The test side of :mod:`tests.cli.forked_cli`: ``bstune ARGV`` run in a fork of one process that
imported the command line once, answered as :func:`subprocess.run` would answer.

Each command is a process of its own (its exit code, stdout and stderr, stdin at /dev/null,
stderr not a terminal), as from a shell; it skips the seconds of Python, PyTorch and Optuna
imports a fresh ``python -m bstune.cli`` pays. Its environment is :func:`python_env`'s when the
command is sent (what a module reads from it at import time was read when the runner started);
a test that needs another environment at import, or a signal sent to the command, runs
``python -m bstune.cli`` itself. The console script keeps its own tests
(tests/test_cli.py, tests/reliability/test_bad_input.py, tests/cli/test_help.py).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.reliability.conftest import python_env


class ForkedCli:
    """``bstune ARGV`` in a fork of a ``tests.cli.forked_cli`` process: exit code, stdout, stderr.

    The process starts at the first command (its imports take seconds) and serves every later one.
    """

    def __init__(self) -> None:
        self.files = Path(tempfile.mkdtemp(prefix="bstune-forked-cli-"))  # not in the command's folder
        self.proc: subprocess.Popen[str] | None = None

    def _server(self) -> subprocess.Popen[str]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.cli.forked_cli"],
                env=python_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,  # a group of its own: a timeout kills the command too (a fork of it)
            )
        return self.proc

    def run(self, argv: list[str], cwd: Path, timeout: float = 600) -> tuple[int, str, str]:
        """Run ``bstune ARGV`` in ``cwd``; returns its exit code, stdout and stderr."""
        proc = self._server()
        assert proc.stdin is not None and proc.stdout is not None
        out, err = self.files / "stdout", self.files / "stderr"
        request = {"argv": [str(a) for a in argv], "cwd": str(cwd), "env": python_env(), "stdout": str(out),
                   "stderr": str(err)}  # fmt: skip
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            os.killpg(proc.pid, signal.SIGKILL)  # the server and the command: the next command starts a new server
            proc.wait()
            raise TimeoutError(f"bstune {' '.join(map(str, argv))} ran past {timeout} s")
        answer = json.loads(proc.stdout.readline())
        texts = out.read_text(), err.read_text()
        out.unlink()
        err.unlink()
        return int(answer["code"]), *texts

    def completed(self, argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """:meth:`run`'s answer as ``subprocess.run(..., capture_output=True, text=True)`` gives it."""
        code, out, err = self.run(argv, cwd, timeout)
        return subprocess.CompletedProcess(["bstune", *map(str, argv)], code, out, err)

    def close(self) -> None:
        try:
            if self.proc is not None:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()  # the server's loop ends
                self.proc.wait(timeout=60)
        finally:
            if self.proc is not None and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: nothing else would stop it
                self.proc.wait()
            shutil.rmtree(self.files, ignore_errors=True)
