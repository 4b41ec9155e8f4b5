"""Run ``bstune`` commands, each in a fresh fork of a process that imported the command line once.

    python -m tests.cli.forked_cli

Reads one JSON request per line on stdin, ``{"argv": [...], "cwd": DIR, "stdout": FILE, "stderr": FILE}``;
for each it forks, and the child runs ``bstune.cli.main(argv)`` in DIR with its stdout and stderr
written to the two files, as ``python -m bstune.cli ARGV`` would, then exits with the command's code.
It answers ``{"code": N}`` on a line of its own once the child is gone.

A command is a process of its own, as from a shell, but it skips the seconds of Python, PyTorch,
Optuna, SciPy and matplotlib imports each ``python -m bstune.cli`` pays (tests/cli/cli_runner.py
is the tests' side). The parent never runs PyTorch itself (no thread pool exists when it forks).
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import scipy.optimize  # where a fit or an interval is first made
import scipy.stats  # noqa: F401

import bstune.cli
from bstune import _commands  # noqa: F401 - what the commands import (PyTorch, Optuna), loaded once here
from bstune.report import _html  # noqa: F401 - the report's plots (matplotlib), which every run writes


def _child(request: dict[str, object]) -> int:
    os.chdir(str(request["cwd"]))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, key in ((1, "stdout"), (2, "stderr")):
        target = os.open(str(request[key]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    argv = [str(a) for a in request["argv"]]  # type: ignore[attr-defined]
    sys.argv = [bstune.cli.__file__, *argv]
    try:
        code = bstune.cli.main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what the interpreter would print, and its exit code
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
