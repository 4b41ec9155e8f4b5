"""What each ``bstune`` command does, given its parsed arguments (the grammar is in :mod:`bstune.cli`).

Each ``cmd_*`` returns the command's exit code: 0 on success, 1 when the work failed;
bad input raises :class:`bstune.errors.ConfigError`, which :func:`bstune.cli.main` turns
into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Any

from bstune._command_io import load_result, wants_progress, writable_out, write_json, write_report
from bstune._loading import load_subject, load_task
from bstune._run_command import cmd_run
from bstune._train_command import cmd_train
from bstune.errors import ConfigError
from bstune.records import clean_json
from bstune.study import format_summary
from bstune.task import Task

__all__ = [
    "cmd_crit",
    "cmd_fetch",
    "cmd_noise",
    "cmd_probe",
    "cmd_report",
    "cmd_run",
    "cmd_status",
    "cmd_submit",
    "cmd_train",
]


def cmd_noise(args: argparse.Namespace) -> int:
    import bstune

    writable_out(args.out)
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
    write_json(args.out, "noise_scale.json", {"estimate": est.to_dict(), "warmup_run": trained})
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
    from bstune.jobs import failure, status

    state = status(args.job_id, address=args.address)
    why = failure(args.job_id, address=args.address) if state == "FAILED" else None
    print(f"{state}: {why}" if why else state)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from bstune.jobs import fetch_report

    folder = fetch_report(args.job_id, args.out, address=args.address)
    print(f"wrote {folder / 'result.json'} and the report; see {folder / 'report.md'}")
    return 0


def _interval_kind(spread: float | None) -> str:
    """What the probe's B_simple interval holds (see report.md's noise-scale section)."""
    if spread is None:
        return "sampling only: too few trajectory points to widen it; another seed's may fall outside"
    widened = "widened by the run's trajectory spread as a stand-in for another seed's"
    return widened + (f"; log-sd {spread:.2g}, small: another seed's may fall outside" if spread < 0.2 else "")


def cmd_probe(args: argparse.Namespace) -> int:
    from bstune.space import SearchSpace
    from bstune.study import Prior, probe_space

    writable_out(args.out)
    subject = load_subject(args.script)
    space = SearchSpace.coerce(args.space)
    budget = args.budget_samples  # as a study with this trial budget probes: its run one trial long, if shorter
    how: dict[str, Any] = {
        "seed": args.seed,
        "device": args.device,
        "progress": wants_progress(args),
        "budget_samples": budget,
        "eval_every_samples": None if budget is None else max(1, -(-budget // args.n_evals)),
    }
    if isinstance(subject, Task):
        if not space.optimizer_named:  # as a study of this space trains it: the task's optimizer, and its LR rule
            space = dataclasses.replace(space, optimizer=subject.optimizer_spec)
        cap = min(space.batch_max or subject.n_train, subject.n_train)
        probe = probe_space(subject, space, batch_cap=cap, **how)
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
        probe = probe_function(job, space, batch_cap=cap, **how)
    prior = Prior.for_space(probe, space, probe.search_cap(cap))
    lo, hi = probe.b_simple_ci
    print(
        f"B_simple {probe.b_simple:.4g} (90% CI {lo:.4g} .. {hi:.4g}, {_interval_kind(probe.b_simple_seed_spread)}) "
        "after "
        f"{probe.b_simple_at_samples or 0:,} samples of training; the probe spent {probe.samples_used:,} in all "
        f"({probe.seconds:.1f}s on {probe.device})"
    )
    if probe.b_noise is not None and probe.b_noise_ci is not None:
        nlo, nhi = probe.b_noise_ci
        print(
            f"B_noise {probe.b_noise:.4g} (90% CI {nlo:.4g} .. {nhi:.4g}): tr(HΣ)/(GᵀHG) with the loss's curvature, "
            "where B_simple takes the Hessian to be isotropic"
        )
    skipped = probe.lr_ceiling_at_max and probe.large_batch > probe.batch_size  # no test ran at the large batch
    large = (
        f"no test at B={probe.large_batch} (a larger batch only raises it)"
        if skipped
        else f"{'>=' if probe.lr_ceiling_large_at_max else ''}{probe.lr_ceiling_large:.3g} at B={probe.large_batch}"
    )
    print(
        f"LR ceiling {'>=' if probe.lr_ceiling_at_max else ''}{probe.lr_ceiling:.3g} at B={probe.batch_size}, "
        f"{large}{' (>=: the test reached lr.max unbroken)' if probe.lr_ceiling_at_max else ''}; "
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
    write_json(args.out, "probe.json", {"probe": probe.to_dict(), "prior": prior.to_dict()})
    return 0


def cmd_crit(args: argparse.Namespace) -> int:
    from bstune.study import measure_study_critical_batch

    result = load_result(args.folder)  # before the script runs: a wrong folder is said at once
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
    write_json(args.folder, "critical.json", clean_json(measured))
    print(measured["summary"])
    files = write_report(result, args.folder)
    print("wrote critical.json, result.json, " + ", ".join(files.values()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.target_value is not None and not math.isfinite(args.target_value):
        raise ConfigError(f"must be a finite number, got {args.target_value}", source="--target-value")
    result = load_result(args.folder)
    if args.target_metric is None:
        args.target_metric = "train_loss"
        if args.target_value is not None:  # a value alone: say which metric it is read for (an accuracy, meant?)
            print(
                f"bstune: --target-value {args.target_value:g} is read as a target for train_loss, the default "
                "--target-metric; name another metric with --target-metric",
                file=sys.stderr,
            )
    result.direction_of(  # before anything is written
        args.target_metric, source="--target-metric", field=None, given=args.target_direction
    )
    writable_out(args.out)
    print(format_summary(result.to_dict(), top=None if args.all_trials else 10, folder=args.folder))
    files = write_report(
        result,
        args.out or args.folder,
        args.target_metric,
        args.target_value,
        args.workers,
        direction=args.target_direction,
        echo=True,
    )
    print("wrote " + ", ".join(files.values()))
    return 0
