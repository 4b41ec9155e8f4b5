"""What the ``bstune`` commands share: the output folder, the JSON files they write, the result they read,
the report they write, whether to draw progress bars."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bstune._interrupts import ctrl_c_held
from bstune.errors import ConfigError

if TYPE_CHECKING:
    from bstune.study import StudyResult


__all__ = ["load_result", "wants_progress", "writable_out", "write_json", "write_report"]

logger = logging.getLogger("bstune.cli")

# what writing a report imports on first use, with C extensions an interrupted import leaves broken
REPORT_IMPORTS = ("scipy.optimize", "scipy.stats", "bstune.report._plots")


def writable_out(out: str | None, option: str = "--out") -> None:
    """Make the output folder now, so that a folder that cannot be made is one error before any training."""
    if out is None:
        return
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make the folder {out!r}: {exc.strerror or exc}", source=option) from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"cannot write into the folder {out!r}", source=option)


def write_json(out: str | None, name: str, data: dict[str, Any]) -> None:
    if out is None:
        return
    writable_out(out)
    folder = Path(out)
    path = folder / name
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    logger.info("wrote %s", path)


def wants_progress(args: argparse.Namespace) -> bool:
    """Progress bars: as ``--progress``/``--no-progress`` say, else when stderr is a terminal."""
    return bool(args.progress) if args.progress is not None else sys.stderr.isatty()


def load_result(folder: str) -> StudyResult:
    """FOLDER/result.json, or a ConfigError naming the file and why."""
    from bstune.study import StudyResult

    path = Path(folder) / "result.json"
    if Path(folder).is_file():
        raise ConfigError(
            "is a file (a study's storage?), not the --out folder of `bstune run`, which holds result.json",
            source=str(folder),
        )
    if not Path(folder).is_dir():
        raise ConfigError("no such folder; give the --out folder of `bstune run`", source=str(folder))
    if not path.is_file():
        stored = [p.name for p in (Path(folder) / "study.db", Path(folder) / "ray") if p.exists()]
        if stored and _stored_trials(folder, None)[1]:  # a study writes its result when it ends
            raise ConfigError(
                f"no result.json here yet: the study in {', '.join(stored)} is running (a trial's process is alive); "
                "its report comes when it ends",
                source=str(folder),
            )
        if stored:  # a study stopped before its end (Ctrl-C, a kill) writes its result only when it finishes
            raise ConfigError(
                f"no result.json here, but a study's trials are ({', '.join(stored)}): it stopped before its end; "
                "finish it with its `bstune run` command and --resume",
                source=str(folder),
            )
        raise ConfigError("no result.json here; run `bstune run ... --out FOLDER` first", source=str(folder))
    try:
        result = StudyResult.load(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"unreadable: {type(exc).__name__}: {exc}", source=str(path)) from None
    finished, running = _stored_trials(folder, result.study_name)
    written = sum(1 for t in result.trials if t.status.finished)
    if finished is not None and (finished > written or running):
        logger.warning(
            "%s holds %d finished trial(s)%s, result.json %d: the study ran on after it was written (resumed%s); "
            "this report is of the %d, until it ends%s",
            Path(folder) / "study.db",
            finished,
            f" and {running} running" if running else "",
            written,
            ", and running now" if running else ", then stopped",
            written,
            "" if running else " (finish it with its `bstune run` command and --resume)",
        )
    return result


def _stored_trials(folder: str, name: str | None) -> tuple[int | None, int]:
    """(finished trials, trials running with a live owner) of FOLDER/study.db's study ``name`` (None: its only
    one); ``(None, 0)`` where there is no such storage or study."""
    db = Path(folder) / "study.db"
    if not db.is_file():
        return None, 0
    import optuna

    from bstune.study import stored_progress

    storage = f"sqlite:///{db}"
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if name is None:
            if len(names) != 1:
                return None, 0
            name = names[0]
        if name not in names:
            return None, 0
        study = optuna.load_study(study_name=name, storage=storage)
        return stored_progress(study.get_trials(deepcopy=False))
    except Exception:  # an unreadable storage says nothing here: the report reads result.json
        logger.debug("could not read %s", db, exc_info=True)
        return None, 0


def write_report(
    result: StudyResult,
    folder: str,
    metric: str = "train_loss",
    value: float | None = None,
    workers: int = 1,
    *,
    direction: str | None = None,
    echo: bool = False,
) -> dict[str, str]:
    """Write report.json, report.md and report.html for ``result`` into ``folder``; returns the files by kind.

    ``echo``: print the report's markdown too.
    """
    # the report's imports first (SciPy, matplotlib): a Ctrl-C inside one breaks it
    with ctrl_c_held("the report's modules are loaded"):
        for name in REPORT_IMPORTS:
            importlib.import_module(name)
    target: dict[str, Any] = {"metric": metric}
    if value is not None:
        target["value"] = value
    if direction is not None:
        target["direction"] = direction
    report = result.report(target, n_workers=workers)
    files = report.save(folder)
    if echo:
        print()
        print(report.to_markdown())
    return files
