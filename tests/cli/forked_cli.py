"""Run ``bstune`` commands, each in a fresh fork of a process that imported the command line once.

    python -m tests.cli.forked_cli

Reads one JSON request per line on stdin, ``{"argv": [...], "cwd": DIR, "env": {...}, "stdout": FILE,
"stderr": FILE}``; for each it forks, and the child runs ``bstune.cli.main(argv)`` in DIR with that
environment and its stdout and stderr written to the two files, as ``python -m bstune.cli ARGV`` would,
then exits as that command exits.
It answers ``{"code": N}`` on a line of its own once the child is gone.

A command is a process of its own, as from a shell, but it skips the seconds of Python, PyTorch,
Optuna, SciPy and matplotlib imports each ``python -m bstune.cli`` pays (tests/cli/cli_runner.py
is the tests' side). The parent never runs PyTorch itself (no thread pool exists when it forks).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import scipy.optimize  # where a fit or an interval is first made
import scipy.stats  # noqa: F401

import bstune.cli
from bstune import _commands  # noqa: F401 - what the commands import (PyTorch, Optuna), loaded once here
from bstune.report import _html  # noqa: F401 - the report's plots (matplotlib), which every run writes


def _child(request: dict[str, Any]) -> NoReturn:
    """Become ``python -m bstune.cli ARGV`` run in the request's folder and environment.

    Ends as that command ends: ``sys.exit`` with its code, or its exception's traceback and exit 1,
    through the interpreter's own shutdown (threads joined, atexit handlers run, output flushed),
    so a command that hangs or fails on the way out does so here too.
    """
    cwd = str(request["cwd"])
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(request["env"])  # read when the command runs (what is read at import time was read)
    sys.path[0] = cwd  # python -m puts the working folder first
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, key in ((1, "stdout"), (2, "stderr")):
        target = os.open(str(request[key]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    argv = [str(a) for a in request["argv"]]
    sys.argv = [bstune.cli.__file__, *argv]
    sys.exit(bstune.cli.main(argv))


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)  # raises SystemExit, or the command's exception: the child never loops again
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
