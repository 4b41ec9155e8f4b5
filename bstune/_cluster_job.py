"""The entry point of a study submitted to a Ray cluster: ``python -m bstune._cluster_job``.

:func:`bstune.jobs.submit` (the client API) sends a job specification in the job's
environment: the script and the search space as bytes, and the study's settings named
by the ``dest`` of the ``bstune run`` options they set. Here, beside the CLI, the
specification becomes that ``bstune run``: the files are written into the study's output
folder, which becomes the working directory (a Ray ``working_dir`` would do, but Ray may
clean it up while the job still runs), the CLI's own parser reads the fixed part of the
command, and the settings are set on what it parsed. The client never spells a command
line, so the grammar lives in :mod:`bstune.cli` alone.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bstune import cli
from bstune.errors import ConfigError
from bstune.jobs import JOB_SPEC_VAR

__all__ = ["main"]


def _run_args(spec: Mapping[str, Any], out: Path) -> Any:
    """The parsed ``bstune run`` of a job specification, its settings applied by option ``dest``."""
    fixed = ["--backend", "ray", "--address", "auto", "--out", str(out), "--print-result", "--no-progress"]
    argv = ["run", spec["script_name"], "--space", spec["space_name"], *fixed]
    args = cli.build_parser().parse_args(argv)
    args.command_line = argv
    for dest, value in spec["settings"].items():
        if not hasattr(args, dest):
            raise ConfigError(f"`bstune run` has no option for {dest!r}", source="job", field=dest)
        setattr(args, dest, value)
    return args


def main(environ: Mapping[str, str] | None = None) -> int:
    """Run the study the job's specification describes; returns the ``bstune run`` exit code."""
    spec = json.loads((os.environ if environ is None else environ)[JOB_SPEC_VAR])
    out = Path(spec["out"]).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    (out / spec["script_name"]).write_bytes(base64.b64decode(spec["script"]))
    (out / spec["space_name"]).write_bytes(base64.b64decode(spec["space"]))
    os.chdir(out)
    return cli.run_command(_run_args(spec, out))


if __name__ == "__main__":
    raise SystemExit(main())
