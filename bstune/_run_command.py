"""``bstune run``: a study from a script and a search space, on the embedded backend or Ray, with what it
says while it runs (a line per trial off a terminal), on Ctrl-C (what was kept, the command that resumes)
and before it starts (an output folder or storage that already holds the study)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bstune._command_io import wants_progress, write_report
from bstune._keys import STATE_FILE
from bstune._loading import load_subject
from bstune.errors import BstuneError, ConfigError, StorageError
from bstune.study import format_summary, lock_files
from bstune.task import Task

__all__ = ["cmd_run"]

logger = logging.getLogger("bstune.cli")


def _ray_storage(args: argparse.Namespace, name: str) -> str | None:
    """Where the Ray backend keeps the experiment; refuses to mix up a new and an old study."""
    from bstune.study import RaySettings

    if args.storage is not None:
        raise ConfigError(
            "the Ray backend keeps its trials under --out (OUT/ray); leave --storage unset", source="--storage"
        )
    path = str(Path(args.out) / "ray") if args.out else None
    exists = RaySettings(storage_path=path).experiment_dir(name).is_dir()
    if exists and not args.resume:
        raise ConfigError(
            f"already holds study {name!r}; pass --resume to continue it, or choose another --out",
            source=path or "~/ray_results",
        )
    if args.resume and not exists:
        raise ConfigError(f"holds no study {name!r} to resume", source=path or "~/ray_results")
    return path


def _refuse_another_study(args: argparse.Namespace, name: str, stored: set[str] | None) -> None:
    """--out holds another study, whose result.json and report this run would write over: another script's or
    --study-name's in the folder's storage (``stored``: the study names in study.db, None where the run keeps its
    trials elsewhere; the other run may not have written its result.json yet) or in its ray/ folder, or a
    result.json whose study this folder's storage does not hold (fetched, or run with --storage elsewhere), even
    of this run's name."""
    if not args.out:
        return
    folder = Path(args.out)
    others = stored - {name} if stored is not None else set()
    if (folder / "ray").is_dir():
        others |= {p.name for p in (folder / "ray").iterdir() if p.is_dir() and p.name != name}
    result = folder / "result.json"
    if result.is_file():
        try:
            kept = json.loads(result.read_text()).get("study_name")
        except (OSError, ValueError, AttributeError):
            kept = None
        if isinstance(kept, str) and (kept != name or (stored is not None and kept not in stored)):
            others.add(kept)
    if others:
        raise ConfigError(
            f"holds study {sorted(others)[0]!r} (its result.json, report or trials), which this run's would be "
            "written over; choose another --out (to continue that study, run its own command with --resume)",
            source=args.out,
        )


@contextlib.contextmanager
def _trial_lines(enabled: bool) -> Iterator[None]:
    """Without progress bars (stderr is no terminal: a log file, nohup, CI), a line per finished trial on stderr
    while the study runs, so a long one does not run silent until its end."""
    if not enabled:
        yield
        return
    print("bstune: stderr is not a terminal: a line per finished trial instead of progress bars", file=sys.stderr)
    lines, handler = logging.getLogger("bstune.trials"), _StderrLines()
    saved = lines.level, lines.propagate
    lines.addHandler(handler)
    lines.setLevel(logging.INFO)
    lines.propagate = False  # -v would print it twice
    try:
        yield
    finally:
        lines.removeHandler(handler)
        lines.setLevel(saved[0])
        lines.propagate = saved[1]


class _StderrLines(logging.Handler):
    """Each record's message alone, on the ``sys.stderr`` of the moment (a test may have swapped it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage(), file=sys.stderr)


def _trial_states(storage: Any, name: str) -> str:
    """What a stored study holds, by what became of each trial: ``5 trials (3 finished, 1 interrupted, ...)``."""
    import optuna

    from bstune.study import describe_states

    return describe_states(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))


def cmd_run(args: argparse.Namespace) -> int:
    """``bstune run``. SIGTERM (``timeout``, Slurm, ``docker stop``) stops it as Ctrl-C does: the finished trials
    kept, the running ones to run again, and the line that continues; the exit code is 143, as for a SIGTERM."""
    terminated: list[int] = []

    def stop(signum: int, frame: Any) -> None:  # through the SIGINT handler of the moment: the parallel workers'
        terminated.append(signum)  # flag, Ray Tune's event, else Python's KeyboardInterrupt
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if main else None
    try:
        code = _run(args)
    except KeyboardInterrupt:  # before the study began (the script's import), or a second signal in its clean-up
        if not terminated:
            raise
        print("bstune: interrupted", file=sys.stderr)
        code = 130
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 143 if code == 130 and terminated else code


def _run(args: argparse.Namespace) -> int:
    import optuna

    if args.backend != "ray":  # a forgotten --backend ray ran the whole study in this process, without a word
        for option, value in (("--address", args.address), ("--resources", args.resources),
                              ("--max-concurrent", args.max_concurrent)):  # fmt: skip
            if value is not None:
                raise ConfigError(
                    "is a setting of the Ray backend; add --backend ray to run on the cluster", source=option
                )
    if args.out:
        args.out = str(Path(args.out).expanduser().absolute())
    task = load_subject(args.script)
    name = args.study_name or f"bstune-{task.name if isinstance(task, Task) else getattr(task, '__name__', 'train')}"
    storage = None
    storage_path = None
    if args.backend == "ray":
        storage_path = _ray_storage(args, name)
    else:
        storage = args.storage or (f"sqlite:///{Path(args.out) / 'study.db'}" if args.out else None)
    from bstune.study import RaySettings, Study, StudyFailedError, storage_file

    # what opening the storage creates (the Ray backend's: its experiment folder and state file): a failed
    # start removes it
    created = _not_yet_there(
        storage_file(storage)
        if args.backend != "ray"
        else RaySettings(storage_path=storage_path).experiment_dir(name) / STATE_FILE
    )
    study: Study | None = None
    try:
        study = Study(  # checks every setting (the space file first) before it opens, and so creates, the storage
            task,
            args.space,
            n_trials=args.trials,
            budget_samples=args.budget_samples,
            n_evals=args.n_evals,
            seed=args.seed,
            storage=storage,
            study_name=name,
            mode=args.mode,
            pruner=args.pruner,
            rescore_top=args.rescore_top,
            rescore_seeds=args.rescore_seeds,
            critical_batch=args.critical_batch,
            objective=args.objective,
            direction=args.direction,
            device=args.device,
            num_workers=args.num_workers,
            parallel_trials=args.parallel_trials,
            devices=args.devices,
            devices_per_trial=args.devices_per_trial,
            progress=wants_progress(args),
            backend=args.backend,
            ray=RaySettings(
                address=args.address,
                resources_per_trial=args.resources,
                max_concurrent=args.max_concurrent,
                storage_path=storage_path,
                max_failures=args.max_failures,
            )
            if args.backend == "ray"
            else None,
        )
        names = (
            {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(study.storage)}
            if study.storage is not None
            else {}
        )
        if not args.resume:
            _refuse_another_study(
                args, name, set(names) if study.storage is not None and args.storage is None else None
            )
        if study.storage is not None:
            if name in names and names[name] and not args.resume:
                raise ConfigError(
                    f"already holds study {name!r} with {_trial_states(study.storage, name)}; pass --resume to "
                    "continue it, or choose another --out/--storage",
                    source=storage,
                )
            if args.resume and name not in names:
                raise ConfigError(f"holds no study {name!r} to resume", source=storage)
        try:
            with _trial_lines(args.progress is None and not sys.stderr.isatty()):
                result = study.run()
        except StorageError as exc:  # what it says is done in the command line by --resume
            if _holds_trials(study):
                advice = f"{exc.advice}: {_command(args, resume=True)}"
            else:  # nothing to resume: what this run made is taken back below
                advice = f"no trial was recorded: make room, then start again: {_command(args, resume=False)}"
            raise StorageError(exc.reason, source=exc.source, advice=advice) from None
        except StudyFailedError as exc:
            where = storage or storage_path
            if where is None:
                raise
            raise StudyFailedError(f"{exc}: {where}", traceback=exc.traceback) from None
    except KeyboardInterrupt:
        line = _interrupted(args, study, storage or storage_path)
        if line is None:  # before the study was stored: as after a failed start, nothing is left behind
            _take_back(created, study.storage if study is not None else None)
            line = f"bstune: interrupted before the study started; start again with: {_command(args, resume=False)}"
        print(line, file=sys.stderr)
        return 130
    except BaseException as exc:
        _take_back(created, study.storage if study is not None else None, bad_settings=isinstance(exc, ConfigError))
        raise
    data = result.to_dict()
    where = storage or storage_path
    try:
        path = result.save(args.out) if args.out else None  # before anything that reads it can fail
    except OSError as exc:  # a full disk: the summary still says what was found, and the study is kept
        print(format_summary(data, folder=None))
        kept = f"the study is kept in {where}: make room, then {_command(args, resume=True)} writes it" if where else ""
        print(f"bstune: could not write result.json into {args.out}: {exc.strerror or exc}; {kept}", file=sys.stderr)
        return 1
    print(format_summary(data, folder=args.out))
    if path is not None:
        print(f"wrote {path}" + (f"; the trials are in {where}" if where else ""))
        try:
            files = write_report(result, args.out)
        except KeyboardInterrupt:  # the study is done and kept: only the report is missing
            print(
                f"bstune: interrupted while writing the report; the study finished and {path} is kept: "
                f"`bstune report {shlex.quote(args.out)}` writes the report from it",
                file=sys.stderr,
            )
            return 130
        except (BstuneError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(
                f"bstune: the report could not be written ({type(exc).__name__}: {reason}); {path} is kept: "
                f"`bstune report {shlex.quote(args.out)}` writes the report from it",
                file=sys.stderr,
            )
            return 1
        print(
            f"report: {files['md']} (also {Path(files['html']).name}, {Path(files['json']).name}); "
            f"`bstune report {shlex.quote(args.out)}` writes it again with other options"
        )
    if args.print_result:
        from bstune.jobs import RESULT_BEGIN, RESULT_END

        print(RESULT_BEGIN)
        print(json.dumps(data, allow_nan=False))
        print(RESULT_END, flush=True)
    return 0


def _not_yet_there(file: Path | None) -> list[Path]:
    """``file``, the files SQLite and the journal lock put beside it, and its folders, as far as they do not exist."""
    if file is None:
        return []
    file = file.expanduser().absolute()
    files = [file.with_name(file.name + suffix) for suffix in ("", "-journal", "-wal", "-shm", ".lock")]
    folders = [folder for folder in file.parents if not folder.exists()]  # deepest first
    return [path for path in files if not path.exists()] + folders


def _holds_trials(study: Any) -> bool:
    """Whether the study's storage holds a trial of it (True where it cannot be read: it may)."""
    import optuna

    try:
        return bool(optuna.load_study(study_name=study.study_name, storage=study.storage).get_trials(deepcopy=False))
    except KeyError:  # no such study
        return False
    except Exception:
        return True


def _take_back(created: list[Path], storage: Any, *, bad_settings: bool = False) -> None:
    """After a failed start: remove what this run created (``created``), unless it holds trials by now.

    Only paths that did not exist before the run are in ``created``; a folder goes only if it is empty.
    Where the start failed on its settings (``bad_settings``: a space whose smallest batch is larger than
    the training set, found by the first trial) and only failed trials were stored, they go too: the
    settings must change, and a resume with other settings is refused, so they would only block the
    corrected command.
    """
    if not created or _holds_ray_work(created):
        return
    if storage is not None:
        import optuna

        try:
            for summary in optuna.get_all_study_summaries(storage):
                trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
                # a failed start's only trials: failed in the code, having trained nothing (diverged or out-of-memory
                # trials are failures to Optuna too, but trained: kept)
                untrained = all(
                    t.state == optuna.trial.TrialState.FAIL
                    and t.user_attrs.get("status") == "failed"
                    and not t.user_attrs.get("samples")
                    for t in trials
                )
                if trials and (not bad_settings or not untrained):
                    return  # the work done is kept: `--resume` continues it
        except Exception:  # unreadable: leave it for the user to look at
            return
        backend = getattr(storage, "_backend", storage)
        if hasattr(backend, "engine"):
            backend.engine.dispose()  # close SQLite's connections before its file goes
    # with a storage file this run made, the lock files beside it (bstune.study._trial_taking), made by it too
    locks = {p: lock_files(p) for p in created if not p.is_dir()}
    for path in [q for p in created for q in (p, *locks.get(p, []))]:
        try:
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
        except OSError:
            logger.info("left %s in place", path)
    logger.info("the start failed: removed what it had created (%s)", ", ".join(map(str, created)))


def _holds_ray_work(created: list[Path]) -> bool:
    """True where a Ray study's state file this run created holds work to keep: its probe, or an experiment
    Tune began beside it (anything else in its folder)."""
    for state in (p for p in created if p.name == STATE_FILE and p.is_file()):
        try:
            kept = json.loads(state.read_text()).get("probe") is not None
        except (OSError, ValueError):
            return True  # unreadable: leave it for the user to look at
        if kept or any(p != state for p in state.parent.iterdir()):
            return True
    return False


def _command(args: argparse.Namespace, *, resume: bool) -> str:
    """This ``bstune`` command line, with ``--resume`` or without it."""
    words = [word for word in args.command_line if word != "--resume"]
    return shlex.join(["bstune", *words, *(["--resume"] if resume else [])])


def _interrupted(args: argparse.Namespace, study: Any, where: str | None) -> str | None:
    """The one line after Ctrl-C: what the storage kept, and the command that continues the study.

    None when the storage holds no study yet (Ctrl-C before it was opened).
    """
    if where is None:
        return "bstune: interrupted; nothing was kept (the trials were in memory: pass --out to keep them)"
    from bstune.study import storage_file

    shown = storage_file(where) or where
    command = _command(args, resume=True)
    if study is not None and getattr(study.backend, "name", None) == "ray":
        return f"bstune: interrupted; the finished trials are kept in {shown}; continue with: {command}"
    if study is None or study.storage is None:
        return None
    import optuna

    from bstune.study import count_finished

    try:
        stored = optuna.load_study(study_name=study.study_name, storage=study.storage)
    except KeyError:
        return None
    again = sorted(
        t.user_attrs["retry_of"]
        for t in stored.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if "retry_of" in t.user_attrs
    )
    rerun = ""
    if again:
        rerun = (
            f"; trial {again[0]} runs again" if len(again) == 1 else f"; trials {', '.join(map(str, again))} run again"
        )
    finished = count_finished(stored)
    return (
        f"bstune: interrupted; kept {finished} finished trial{'' if finished == 1 else 's'} of {args.trials} "
        f"in {shown}{rerun}; continue with: {command}"
    )
