"""What each ``bstune`` command does, given its parsed arguments (the grammar is in :mod:`bstune.cli`).

Each ``cmd_*`` returns the command's exit code: 0 on success, 1 when the work failed;
bad input raises :class:`bstune.errors.ConfigError`, which :func:`bstune.cli.main` turns
into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shlex
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bstune._loading import load_subject, load_task
from bstune._validate import check_count
from bstune.errors import BstuneError, ConfigError, UserCodeError
from bstune.records import clean_json
from bstune.study import format_summary
from bstune.task import Task

if TYPE_CHECKING:
    from bstune.study import StudyResult

__all__ = ["cmd_fetch", "cmd_noise", "cmd_probe", "cmd_report", "cmd_run", "cmd_status", "cmd_submit", "cmd_train"]

logger = logging.getLogger("bstune.cli")


def _writable_out(out: str | None, option: str = "--out") -> None:
    """Make the output folder now, so that a folder that cannot be made is one error before any training."""
    if out is None:
        return
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make the folder {out!r}: {exc.strerror or exc}", source=option) from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"cannot write into the folder {out!r}", source=option)


def _write_json(out: str | None, name: str, data: dict[str, Any]) -> None:
    if out is None:
        return
    _writable_out(out)
    folder = Path(out)
    path = folder / name
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    logger.info("wrote %s", path)


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars: as ``--progress``/``--no-progress`` say, else when stderr is a terminal."""
    return bool(args.progress) if args.progress is not None else sys.stderr.isatty()


def cmd_noise(args: argparse.Namespace) -> int:
    import bstune

    _writable_out(args.out)
    task = load_task(args.script, command="bstune noise")
    model = None
    trained: dict[str, Any] | None = None
    if args.train_samples:
        cfg = bstune.TrainConfig(
            batch_size=args.train_batch_size,
            lr=args.lr,
            max_samples=args.train_samples,
            seed=args.seed,
            device=args.device,
        )
        run = bstune.train(task, cfg)
        if run.status is not bstune.RunStatus.COMPLETED:
            print(f"bstune: the warm-up training run ended {run.status.value}: {run.message}", file=sys.stderr)
            return 1
        model, trained = run.model, run.to_dict()
    est = bstune.measure_noise_scale(
        task,
        model,
        batch_size=args.batch_size,
        method=args.method,
        rel_precision=args.rel_precision,
        max_samples=args.max_samples,
        confidence=args.confidence,
        seed=args.seed,
        device=None if args.device == "auto" else args.device,
    )
    print(est)
    _write_json(args.out, "noise_scale.json", {"estimate": est.to_dict(), "warmup_run": trained})
    return 0


_FILE_SETTINGS = ("batch_size", "lr", "warmup_samples")  # TrainConfig settings a recommended config holds
_OPTIMIZER_KEYS = ("optimizer", "betas")


def _study_eval_every(data: dict[str, Any]) -> int | None:
    """The samples between a study's evaluations, as its trials ran (report.json and result.json list them)."""
    for trial in data.get("trials") or []:
        every = (trial.get("config") or {}).get("eval_every_samples") if isinstance(trial, dict) else None
        if isinstance(every, int) and every > 0:
            return every
    return None


def _recommended_config(path: str) -> tuple[dict[str, Any], int | None]:
    """The recommended config of a study and its budget in samples, from report.json or result.json."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError("no such file", source=path) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"unreadable: {type(exc).__name__}: {exc}", source=path) from None
    if isinstance(data, dict) and isinstance(data.get("recommended"), dict):  # report.json
        study = data.get("study")
        return dict(data["recommended"]), study.get("budget_samples") if isinstance(study, dict) else None
    if isinstance(data, dict) and isinstance(data.get("best_config"), dict):  # result.json
        return dict(data["best_config"]), data.get("budget_samples")
    raise ConfigError(
        "holds no recommended config: neither 'recommended' (as report.json has) nor 'best_config' (result.json)",
        source=path,
    )


def _parse_value(text: str) -> Any:
    """``64`` -> 64, ``0.95`` / ``1e-3`` -> float, ``true``/``false`` -> bool, anything else the string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.lower() == "true" if text.lower() in ("true", "false") else text


def _check_param(name: str, value: Any, source: str) -> None:
    """A hyperparameter as a search space could set it (a known setting or ``model.<kwarg>``), with a valid value."""
    from bstune.space import ParamSpec

    try:
        ParamSpec(name, "categorical", choices=(value,))
    except ConfigError as exc:
        raise ConfigError(exc.reason, source=source, field=str(name)) from None


def _train_settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], int | None]:
    """From --config, then --param, then the explicit options (each overriding the one before):
    TrainConfig settings, space-style parameters, optimizer settings and the file's budget."""
    settings: dict[str, Any] = {}
    params: dict[str, Any] = {}
    optimizer: dict[str, Any] = {}
    budget = None
    if args.config is not None:
        from bstune.report import RECOMMENDATION_NOTES

        config, budget = _recommended_config(args.config)
        for key, value in config.items():
            if key in RECOMMENDATION_NOTES:
                continue
            if key in _OPTIMIZER_KEYS:
                optimizer[key] = value
            elif key in _FILE_SETTINGS:
                if key == "warmup_samples":
                    check_count(value, source=args.config, field=key, minimum=0)
                settings[key] = value
            else:
                _check_param(key, value, source=args.config)
                params[key] = value
    for text in args.param or []:
        name, sep, raw = text.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"expected NAME=VALUE, got {text!r}", source="--param")
        value = _parse_value(raw.strip())
        _check_param(name.strip(), value, source="--param")
        params[name.strip()] = value
    explicit = {
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "warmup_samples": args.warmup_samples,
        "schedule": args.schedule,
    }
    for key, value in explicit.items():
        if value is not None:
            settings[key] = value
            params.pop(key, None)
    return settings, params, optimizer, budget


def _with_optimizer(task: Any, optimizer: dict[str, Any], source: str) -> Any:
    """``task`` training with the recommended optimizer family and betas (a study's space may replace the task's)."""
    import dataclasses

    from bstune.optim import OptimizerSpec

    if not optimizer:
        return task
    spec = task.optimizer_spec
    family = optimizer.get("optimizer", spec.family)
    try:
        low, high = (float(b) for b in optimizer.get("betas", spec.betas))
        betas = (low, high)
    except (TypeError, ValueError):
        raise ConfigError(f"must be two numbers, got {optimizer['betas']!r}", source=source, field="betas") from None
    new = dataclasses.replace(spec, betas=betas) if family == spec.family else OptimizerSpec(family=family, betas=betas)
    return dataclasses.replace(task, optimizer=new, validate=False)


def cmd_train(args: argparse.Namespace) -> int:
    import bstune
    from bstune.study import build_model, split_params

    _writable_out(args.out)  # before the training, not after it
    settings, params, optimizer, budget = _train_settings(args)
    for key, option in (("batch_size", "--batch-size"), ("lr", "--lr")):
        if key not in settings:
            raise ConfigError("needed (or --config FILE, a study's report.json or result.json)", source=option)
    max_samples = args.max_samples or budget
    if args.eval_every is None and args.config is not None and max_samples == budget:
        # the study's evaluations: the run's curve is then comparable with its trials' point by point
        args.eval_every = _study_eval_every(json.loads(Path(args.config).read_text()))
    if max_samples is None:
        raise ConfigError(
            "needed: the training budget in samples (--config FILE gives its study's)", source="--max-samples"
        )
    warmup = settings.get("warmup_samples") or 0
    if budget and max_samples != budget and warmup and args.warmup_samples is None:
        logger.warning(
            "warmup_samples=%d was chosen for the study's budget of %s samples (%.0f%% of it); at --max-samples %s "
            "it is %.0f%%: give --warmup-samples %d to keep the share",
            warmup,
            f"{budget:,}",
            100 * warmup / budget,
            f"{max_samples:,}",
            100 * warmup / max_samples,
            round(warmup * max_samples / budget),
        )
    task = _with_optimizer(load_task(args.script, command="bstune train"), optimizer, args.config)
    train_kwargs, model_kwargs = split_params(params, max_samples)  # as a study's trial splits its parameters
    cfg = bstune.TrainConfig(
        **(settings | train_kwargs),
        max_samples=max_samples,
        eval_every_samples=args.eval_every,
        seed=args.seed,
        device=args.device,
        num_workers=args.num_workers,
        micro_batch_size=args.micro_batch_size,
        amp=args.amp,
        track_noise=args.track_noise,
    )
    model = build_model(task, cfg, model_kwargs)
    shown = [f"{k}={v}" for k, v in cfg.to_dict().items() if k in ("batch_size", "lr", "max_samples")]
    shown += [f"{k}={v}" for k, v in (settings | train_kwargs).items() if k not in ("batch_size", "lr")]
    shown += [f"model.{k}={v}" for k, v in model_kwargs.items()]
    print(f"optimizer {task.optimizer_spec.family}: " + " ".join(shown))
    try:
        run = bstune.train(task, cfg, model=model)
    except bstune.BstuneError:
        raise
    except Exception as exc:  # the task's code raised: one line here, the traceback with -v
        raise UserCodeError(
            f"the training run failed in the task's code: {type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
        ) from exc
    metrics = sorted(run.history[-1].metrics) if run.history else []
    print(
        f"{'samples':>10} {'train_loss':>11} {'val_loss':>9} {'gap':>8}"
        + "".join(f" {m:>{max(9, len(m))}}" for m in metrics)
        + f"  {'B_simple (90% CI)':<28}"
    )
    for r in run.history:
        noise = f"{r.noise.b_simple:.4g} ({r.noise.ci[0]:.3g} .. {r.noise.ci[1]:.3g})" if r.noise else ""
        values = "".join(f" {r.metrics.get(m, math.nan):>{max(9, len(m))}.4f}" for m in metrics)
        print(f"{r.milestone:>10} {r.train_loss:>11.4f} {r.val_loss:>9.4f} {r.gap:>8.4f}{values}  {noise:<28}")
    if run.final is not None:
        last = {"train_loss": run.final.train_loss, "val_loss": run.final.val_loss, **run.final.metrics}
        print("final: " + "  ".join(f"{k} {v:.4g}" for k, v in last.items()))
    print(
        f"status: {run.status.value}  steps: {run.steps}  samples: {run.samples}  "
        f"throughput: {run.throughput:.0f} samples/s  {run.message}"
    )
    _write_json(args.out, "train.json", run.to_dict() | {"model_kwargs": model_kwargs})
    return 0 if run.status is bstune.RunStatus.COMPLETED else 1


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
    import optuna

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

    created = _not_yet_there(storage_file(storage))  # what opening the storage creates: a failed start removes it
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
            progress=_progress(args),
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
        if study.storage is not None:
            names = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(study.storage)}
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
    except BaseException:
        _take_back(created, study.storage if study is not None else None)
        raise
    data = result.to_dict()
    print(format_summary(data, folder=args.out))
    if args.out:
        path = result.save(args.out)
        where = storage or storage_path
        print(f"wrote {path}" + (f"; the trials are in {where}" if where else ""))
        try:
            files = _write_report(result, args.out)
        except BstuneError as exc:
            print(
                f"bstune: the report could not be written ({type(exc).__name__}: {exc}); {path} is kept",
                file=sys.stderr,
            )
            return 1
        print(
            f"report: {files['md']} (also {Path(files['html']).name}, {Path(files['json']).name}); "
            f"`bstune report {args.out}` writes it again with other options"
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


def _take_back(created: list[Path], storage: Any) -> None:
    """After a failed start: remove what this run created (``created``), unless it holds trials by now.

    Only paths that did not exist before the run are in ``created``; a folder goes only if it is empty.
    """
    if not created:
        return
    if storage is not None:
        import optuna

        try:
            if any(s.n_trials for s in optuna.get_all_study_summaries(storage)):
                return  # the work done is kept: `--resume` continues it
        except Exception:  # unreadable: leave it for the user to look at
            return
        backend = getattr(storage, "_backend", storage)
        if hasattr(backend, "engine"):
            backend.engine.dispose()  # close SQLite's connections before its file goes
    for path in created:
        try:
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
        except OSError:
            logger.info("left %s in place", path)
    logger.info("the start failed: removed what it had created (%s)", ", ".join(map(str, created)))


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


def cmd_submit(args: argparse.Namespace) -> int:
    from bstune.jobs import submit

    job_id = submit(
        args.script,
        space=args.space,
        address=args.address,
        n_trials=args.trials,
        budget_samples=args.budget_samples,
        seed=args.seed,
        mode=args.mode,
        resources_per_trial=args.resources,
        max_concurrent=args.max_concurrent,
        python=args.python,
    )
    print(job_id)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from bstune.jobs import status

    print(status(args.job_id, address=args.address))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from bstune.jobs import fetch_report

    folder = fetch_report(args.job_id, args.out, address=args.address)
    print(f"wrote {folder / 'result.json'} and the report; see {folder / 'report.md'}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from bstune.space import SearchSpace
    from bstune.study import Prior, probe_space

    _writable_out(args.out)
    subject = load_subject(args.script)
    space = SearchSpace.coerce(args.space)
    if isinstance(subject, Task):
        cap = min(space.batch_max or subject.n_train, subject.n_train)
        probe = probe_space(subject, space, batch_cap=cap, seed=args.seed, device=args.device, progress=_progress(args))
    else:
        from bstune.metrics import Direction
        from bstune.study import FunctionJob, probe_function

        if space.batch_max is None:
            raise ConfigError(
                "a training function's data are not known before it runs: give the space a batch_size.max",
                source=space.source,
                field="batch_size.max",
            )
        cap = space.batch_max
        job = FunctionJob(subject, "val_loss", Direction.MINIMIZE, space.optimizer)
        probe = probe_function(job, space, batch_cap=cap, seed=args.seed, device=args.device, progress=_progress(args))
    prior = Prior.for_space(probe, space, min(cap, probe.batch_ceiling or cap))
    lo, hi = probe.b_simple_ci
    print(
        f"B_simple {probe.b_simple:.4g} (90% CI {lo:.4g} .. {hi:.4g}, the spread a second seed would show) after "
        f"{probe.samples_used:,} samples ({probe.seconds:.1f}s on {probe.device})"
    )
    if probe.b_noise is not None and probe.b_noise_ci is not None:
        nlo, nhi = probe.b_noise_ci
        print(
            f"B_noise {probe.b_noise:.4g} (90% CI {nlo:.4g} .. {nhi:.4g}): tr(HΣ)/(GᵀHG) with the loss's curvature, "
            "where B_simple takes the Hessian to be isotropic"
        )
    print(
        f"LR ceiling {'>=' if probe.lr_ceiling_at_max else ''}{probe.lr_ceiling:.3g} at B={probe.batch_size}, "
        f"{'>=' if probe.lr_ceiling_large_at_max else ''}{probe.lr_ceiling_large:.3g} at "
        f"B={probe.large_batch}{' (>=: the test reached lr.max unbroken)' if probe.lr_ceiling_at_max else ''}; "
        f"probe run at lr {probe.lr_probe:.3g} "
        f"(effective temperature lr/(B(1-m)) {probe.temperature:.3g}, m = SGD momentum, 0 for Adam)"
    )
    print(
        "throughput (samples/s) at the median step, per-step interquartile range in brackets: "
        + ", ".join(
            f"B={b}: {r:,.0f}" + (f" ({q[0]:,.0f}-{q[1]:,.0f})" if (q := probe.throughput_iqr.get(b)) else "")
            for b, r in sorted(probe.throughput.items())
        )
    )
    print(
        f"prior: first trials drawn from batch sizes {prior.batch_low}..{prior.batch_high} "
        f"(the search: {prior.batch_range[0]}..{prior.batch_range[1]}); learning rate by batch size: "
        + ", ".join(f"{b}: {prior.lr_rule(b):.3g}" for b in sorted({prior.batch_low, prior.b_ref, prior.batch_high}))
    )
    _write_json(args.out, "probe.json", {"probe": probe.to_dict(), "prior": prior.to_dict()})
    return 0


def _load_result(folder: str) -> StudyResult:
    """FOLDER/result.json, or a ConfigError naming the file and why."""
    from bstune.study import StudyResult

    path = Path(folder) / "result.json"
    if not Path(folder).is_dir():
        raise ConfigError("no such folder; give the --out folder of `bstune run`", source=str(folder))
    if not path.is_file():
        raise ConfigError("no result.json here; run `bstune run ... --out FOLDER` first", source=str(folder))
    try:
        return StudyResult.load(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"unreadable: {type(exc).__name__}: {exc}", source=str(path)) from None


def cmd_crit(args: argparse.Namespace) -> int:
    from bstune.study import measure_study_critical_batch

    result = _load_result(args.folder)  # before the script runs: a wrong folder is said at once
    task = load_subject(args.script)
    if not isinstance(task, Task):
        raise ConfigError(
            "the direct measurement trains with bstune's trainer: the script must define make_task() -> bstune.Task "
            "(a training function's study keeps the report's fitted B_crit)",
            source=args.script,
        )
    tried = sorted(int(t.batch_size) for t in result.trials if t.batch_size)
    low, high = result.prior.batch_range if result.prior is not None else ((tried[0], tried[-1]) if tried else (1, 1))
    low, high = args.batch_min or low, min(args.batch_max or high, task.n_train)
    if low > high:
        raise ConfigError(f"--batch-min {low} is above the largest batch size {high}", source="--batch-min")
    # an Adam-family study's prior used the space's adam_alpha as its exponent: the rule under test keeps it
    adam_alpha = result.prior.alpha if result.prior is not None and task.optimizer_spec.family != "sgd" else 0.8
    measured = measure_study_critical_batch(
        task,
        result.trials,
        result.best_trial,
        batch_min=low,
        batch_max=high,
        device=args.device,
        adam_alpha=adam_alpha,
        kept=None if args.again else result.critical_measured,
        progress=lambda line: print(line, flush=True),
    )
    result.critical_measured = measured
    result.save(args.folder)
    _write_json(args.folder, "critical.json", clean_json(measured))
    print(measured["summary"])
    files = _write_report(result, args.folder)
    print("wrote critical.json, result.json, " + ", ".join(files.values()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    result = _load_result(args.folder)
    if args.target_metric is None:
        args.target_metric = "train_loss"
        if args.target_value is not None:  # a value alone: say which metric it is read for (an accuracy, meant?)
            print(
                f"bstune: --target-value {args.target_value:g} is read as a target for train_loss, the default "
                "--target-metric; name another metric with --target-metric",
                file=sys.stderr,
            )
    result.direction_of(args.target_metric, source="--target-metric", field=None)  # before anything is written
    _writable_out(args.out)
    print(format_summary(result.to_dict(), top=None if args.all_trials else 10, folder=args.folder))
    files = _write_report(
        result, args.out or args.folder, args.target_metric, args.target_value, args.workers, echo=True
    )
    print("wrote " + ", ".join(files.values()))
    return 0


def _write_report(
    result: StudyResult,
    folder: str,
    metric: str = "train_loss",
    value: float | None = None,
    workers: int = 1,
    *,
    echo: bool = False,
) -> dict[str, str]:
    """Write report.json, report.md and report.html for ``result`` into ``folder``; returns the files by kind.

    ``echo``: print the report's markdown too.
    """
    target: dict[str, Any] = {"metric": metric}
    if value is not None:
        target["value"] = value
    report = result.report(target, n_workers=workers)
    files = report.save(folder)
    if echo:
        print()
        print(report.to_markdown())
    return files
