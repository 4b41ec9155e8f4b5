"""What each ``bstune`` command does, given its parsed arguments (the grammar is in :mod:`bstune.cli`).

Each ``cmd_*`` returns the command's exit code: 0 on success, 1 when the work failed;
bad input raises :class:`bstune.errors.ConfigError`, which :func:`bstune.cli.main` turns
into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from bstune._loading import load_task
from bstune.errors import ConfigError
from bstune.study import format_summary

__all__ = ["cmd_fetch", "cmd_noise", "cmd_probe", "cmd_report", "cmd_run", "cmd_status", "cmd_submit", "cmd_train"]

logger = logging.getLogger("bstune.cli")


def _write_json(out: str | None, name: str, data: dict[str, Any]) -> None:
    if out is None:
        return
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    logger.info("wrote %s", path)


def cmd_noise(args: argparse.Namespace) -> int:
    import bstune

    task = load_task(args.script)
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


def cmd_train(args: argparse.Namespace) -> int:
    import bstune

    task = load_task(args.script)
    cfg = bstune.TrainConfig(
        batch_size=args.batch_size,
        lr=args.lr,
        max_samples=args.max_samples,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        warmup_samples=args.warmup_samples,
        schedule=args.schedule,
        eval_every_samples=args.eval_every,
        seed=args.seed,
        device=args.device,
        micro_batch_size=args.micro_batch_size,
        amp=args.amp,
        track_noise=args.track_noise,
    )
    run = bstune.train(task, cfg)
    print(f"{'samples':>10} {'train_loss':>11} {'val_loss':>9} {'gap':>8}  {'B_simple (90% CI)':<28}")
    for r in run.history:
        noise = f"{r.noise.b_simple:.4g} ({r.noise.ci[0]:.3g} .. {r.noise.ci[1]:.3g})" if r.noise else ""
        print(f"{r.milestone:>10} {r.train_loss:>11.4f} {r.val_loss:>9.4f} {r.gap:>8.4f}  {noise:<28}")
    print(
        f"status: {run.status.value}  steps: {run.steps}  samples: {run.samples}  "
        f"throughput: {run.throughput:.0f} samples/s  {run.message}"
    )
    _write_json(args.out, "train.json", run.to_dict())
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


def cmd_run(args: argparse.Namespace) -> int:
    import optuna

    if args.out:
        args.out = str(Path(args.out).expanduser().absolute())
    task = load_task(args.script)
    name = args.study_name or f"bstune-{task.name}"
    storage = None
    storage_path = None
    if args.backend == "ray":
        storage_path = _ray_storage(args, name)
    else:
        storage = args.storage or (f"sqlite:///{Path(args.out) / 'study.db'}" if args.out else None)
    if storage is not None:
        from bstune.study import open_storage

        opened = open_storage(storage)
        names = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(opened)}  # type: ignore[arg-type]
        if name in names and names[name] and not args.resume:
            raise ConfigError(
                f"already holds study {name!r} with {names[name]} trials; pass --resume to continue "
                "it, or choose another --out/--storage",
                source=storage,
            )
        if args.resume and name not in names:
            raise ConfigError(f"holds no study {name!r} to resume", source=storage)
    from bstune.study import RaySettings, Study

    study = Study(
        task,
        args.space,
        n_trials=args.trials,
        budget_samples=args.budget_samples,
        seed=args.seed,
        storage=storage,
        study_name=name,
        mode=args.mode,
        pruner=args.pruner,
        rescore_top=args.rescore_top,
        rescore_seeds=args.rescore_seeds,
        device=args.device,
        progress=not args.no_progress,
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
    result = study.run()
    data = result.to_dict()
    print(format_summary(data))
    if args.out:
        path = result.save(args.out)
        where = storage or storage_path
        print(f"wrote {path}" + (f"; the trials are in {where}" if where else ""))
    if args.print_result:
        from bstune.jobs import RESULT_BEGIN, RESULT_END

        print(RESULT_BEGIN)
        print(json.dumps(data, allow_nan=False))
        print(RESULT_END, flush=True)
    return 0


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

    task = load_task(args.script)
    space = SearchSpace.coerce(args.space)
    cap = min(space.batch_max or task.n_train, task.n_train)
    probe = probe_space(task, space, batch_cap=cap, seed=args.seed, device=args.device)
    prior = Prior.for_space(probe, space, min(cap, probe.batch_ceiling or cap))
    lo, hi = probe.b_simple_ci
    print(
        f"B_simple {probe.b_simple:.4g} (90% CI {lo:.4g} .. {hi:.4g}) after {probe.samples_used:,} samples "
        f"({probe.seconds:.1f}s on {probe.device})"
    )
    print(
        f"LR ceiling {probe.lr_ceiling:.3g} at B={probe.batch_size}, {probe.lr_ceiling_large:.3g} at "
        f"B={probe.large_batch}; probe run at lr {probe.lr_probe:.3g} (temperature {probe.temperature:.3g})"
    )
    print("throughput (samples/s): " + ", ".join(f"B={b}: {r:,.0f}" for b, r in sorted(probe.throughput.items())))
    print(
        f"prior: batch sizes {prior.batch_low}..{prior.batch_high}; learning rate by batch size: "
        + ", ".join(f"{b}: {prior.lr_rule(b):.3g}" for b in sorted({prior.batch_low, prior.b_ref, prior.batch_high}))
    )
    _write_json(args.out, "probe.json", {"probe": probe.to_dict(), "prior": prior.to_dict()})
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bstune.study import StudyResult

    path = Path(args.folder) / "result.json"
    if not path.is_file():
        raise ConfigError("no result.json here; run `bstune run ... --out FOLDER` first", source=str(args.folder))
    try:
        result = StudyResult.load(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"unreadable: {type(exc).__name__}: {exc}", source=str(path)) from None
    print(format_summary(result.to_dict()))
    target: dict[str, Any] = {"metric": args.target_metric}
    if args.target_value is not None:
        target["value"] = args.target_value
    report = result.report(target, n_workers=args.workers)
    files = report.save(args.out or args.folder)
    print()
    print(report.to_markdown())
    print("wrote " + ", ".join(files.values()))
    return 0
