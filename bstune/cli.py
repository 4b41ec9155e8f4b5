"""The ``bstune`` command line.

    bstune run SCRIPT --space FILE     probe, then tune batch size and learning rate (Optuna in-process,
                                       or --backend ray on a Ray cluster)
    bstune probe SCRIPT --space FILE   only the probe: noise scale, LR ceiling, throughput, the prior
    bstune report DIR                  summarise a finished study's result.json
    bstune submit SCRIPT --space FILE --address URL   run a study as a Ray job; status JOB; fetch JOB OUT
    bstune noise SCRIPT                measure the gradient noise scale of SCRIPT's task
    bstune train SCRIPT                run one training config and print its learning curve

SCRIPT is a Python file defining ``make_task()`` (see ``examples/``). Every command
exits 0 on success, 1 when the work failed, 2 on bad input (with one line saying
which file or option is wrong and why).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bstune import __version__
from bstune._loading import load_task
from bstune.errors import BstuneError, ConfigError
from bstune.study._summary import format_summary

__all__ = ["main"]

logger = logging.getLogger("bstune.cli")


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _write_json(out: str | None, name: str, data: dict[str, Any]) -> None:
    if out is None:
        return
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    logger.info("wrote %s", path)


def _cmd_noise(args: argparse.Namespace) -> int:
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


def _cmd_train(args: argparse.Namespace) -> int:
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


def _resources(text: str) -> dict[str, float]:
    """``gpu=1,cpu=2`` -> ``{"gpu": 1.0, "cpu": 2.0}``."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, amount = part.partition("=")
        try:
            out[name.strip()] = float(amount)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected NAME=AMOUNT[,NAME=AMOUNT], got {part!r}") from None
        if not sep:
            raise argparse.ArgumentTypeError(f"expected NAME=AMOUNT[,NAME=AMOUNT], got {part!r}")
    return out


def _ray_storage(args: argparse.Namespace, name: str) -> str | None:
    """Where the Ray backend keeps the experiment; refuses to mix up a new and an old study."""
    from bstune.study._ray import RaySettings

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


def _cmd_run(args: argparse.Namespace) -> int:
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
    from bstune.study import Study

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
        **(
            {
                "backend": "ray",
                "address": args.address,
                "resources_per_trial": args.resources,
                "max_concurrent": args.max_concurrent,
                "storage_path": storage_path,
                "max_failures": args.max_failures,
            }
            if args.backend == "ray"
            else {}
        ),
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


def _cmd_submit(args: argparse.Namespace) -> int:
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


def _cmd_status(args: argparse.Namespace) -> int:
    from bstune.jobs import status

    print(status(args.job_id, address=args.address))
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from bstune.jobs import fetch_report

    folder = fetch_report(args.job_id, args.out, address=args.address)
    print(f"wrote {folder / 'result.json'} and the report; see {folder / 'report.md'}")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from bstune.space import SearchSpace
    from bstune.study import Prior, ProbeSettings, run_probe

    task = load_task(args.script)
    space = SearchSpace.coerce(args.space)
    cap = min(space.batch_max or task.n_train, task.n_train)
    probe = run_probe(
        task,
        ProbeSettings(),
        batch_min=space.batch_min,
        batch_max=cap,
        lr_min=space.lr_min,
        lr_max=space.lr_max,
        batch_round=space.prior.batch_round,
        seed=args.seed,
        device=args.device,
    )
    prior = Prior.from_probe(
        probe,
        family=space.optimizer.family,
        adam_alpha=space.prior.adam_alpha,
        batch_width=space.prior.batch_width,
        lr_width=space.prior.lr_width,
        batch_min=space.batch_min,
        batch_cap=min(cap, probe.batch_ceiling or cap),
        lr_min=space.lr_min,
        lr_max=space.lr_max,
        momentum_ref=space.optimizer.momentum,
        batch_round=space.prior.batch_round,
    )
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


def _cmd_report(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bstune",
        description="Batch-size and learning-rate tuning for PyTorch, shaped by the gradient noise scale.",
    )
    parser.add_argument("--version", action="version", version=f"bstune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO level) to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="tune batch size and learning rate (probe, then trials; Optuna in-process)",
        description="Probe the task (noise scale, LR ceiling, throughput), then run trials whose batch size and "
        "learning rate follow the noise-scale prior, with early stopping at equal sample counts. "
        "Trials are stored as they finish; --resume continues an interrupted study.",
    )
    run.add_argument("script", help="Python file defining make_task() -> bstune.Task")
    run.add_argument("--space", required=True, help="search-space YAML file (see search_spaces/)")
    run.add_argument("--trials", type=_positive_int, default=40, help="trials to finish (default 40)")
    run.add_argument(
        "--budget-samples",
        type=_positive_int,
        default=300_000,
        help="training samples of one full trial (default 300000); pruned trials use less",
    )
    run.add_argument("--out", default=None, help="folder for study.db (the trials) and result.json")
    run.add_argument(
        "--storage",
        default=None,
        help="Optuna storage instead of OUT/study.db: sqlite:///file.db or a journal file (*.log)",
    )
    run.add_argument("--study-name", default=None, help="name inside the storage (default bstune-<task name>)")
    run.add_argument("--resume", action="store_true", help="continue the study the storage holds")
    run.add_argument(
        "--mode",
        choices=["prior", "baseline"],
        default="prior",
        help="prior: search around the measured noise scale (default); baseline: plain log-uniform",
    )
    run.add_argument(
        "--pruner",
        choices=["hyperband", "median", "successive_halving", "none"],
        default="hyperband",
        help="early stopping at shared sample milestones (default hyperband)",
    )
    run.add_argument(
        "--rescore-top",
        type=int,
        default=3,
        metavar="N",
        help="train the N best completed trials again at more seeds and recommend the best mean; 0: off (default 3)",
    )
    run.add_argument(
        "--rescore-seeds",
        type=int,
        default=2,
        metavar="M",
        help="more seeds per re-scored trial, full budget each; their samples count in the total (default 2)",
    )
    run.add_argument("--seed", type=int, default=0, help="seed for the sampler, the probe and the trials (default 0)")
    run.add_argument("--device", default="auto", help="trial device: cpu, cuda, ... (default: CUDA when available)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray_opts = run.add_argument_group("Ray backend (--backend ray; needs the ray extra)")
    ray_opts.add_argument(
        "--backend",
        choices=["optuna", "ray"],
        default="optuna",
        help="optuna: trials in this process (default); ray: Ray Tune on a cluster, ASHA on training samples",
    )
    ray_opts.add_argument(
        "--address", default=None, help="Ray cluster to join: auto, HOST:6379 or ray://HOST:10001 (default: local Ray)"
    )
    ray_opts.add_argument(
        "--resources",
        type=_resources,
        default=None,
        help="per trial, e.g. gpu=1 or cpu=2 (default: 1 GPU if any, else 1 CPU)",
    )
    ray_opts.add_argument(
        "--max-concurrent", type=_positive_int, default=None, help="trials at once (default: all that fit)"
    )
    ray_opts.add_argument(
        "--max-failures", type=int, default=2, help="retries of a trial whose worker died (default 2)"
    )
    run.add_argument("--print-result", action="store_true", help=argparse.SUPPRESS)  # used by `bstune submit`
    run.set_defaults(handler=_cmd_run)

    submit = sub.add_parser(
        "submit",
        help="submit a study to a Ray cluster as a job (Ray Jobs API) and print the job id",
        description="Package SCRIPT and the space file, submit `bstune run --backend ray` as a Ray job, and detach. "
        "Follow it with `bstune status JOB` and fetch its result with `bstune fetch JOB OUT`.",
    )
    submit.add_argument("script", help="Python file defining make_task() -> bstune.Task")
    submit.add_argument("--space", required=True, help="search-space YAML file (see search_spaces/)")
    submit.add_argument("--address", required=True, help="the cluster's dashboard address, e.g. http://head:8265")
    submit.add_argument("--trials", type=_positive_int, default=40, help="trials to finish (default 40)")
    submit.add_argument("--budget-samples", type=_positive_int, default=300_000, help="samples of one full trial")
    submit.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    submit.add_argument("--mode", choices=["prior", "baseline"], default="prior", help="search mode (default prior)")
    submit.add_argument("--resources", type=_resources, default=None, help="per trial, e.g. gpu=1")
    submit.add_argument("--max-concurrent", type=_positive_int, default=None, help="trials at once")
    submit.add_argument("--python", default="python", help="the cluster's interpreter with bstune installed")
    submit.set_defaults(handler=_cmd_submit)

    job_status = sub.add_parser("status", help="status of a submitted study (PENDING, RUNNING, SUCCEEDED, FAILED)")
    job_status.add_argument("job_id", help="the id `bstune submit` printed")
    job_status.add_argument("--address", required=True, help="the cluster's dashboard address, e.g. http://head:8265")
    job_status.set_defaults(handler=_cmd_status)

    fetch = sub.add_parser(
        "fetch", help="fetch a finished job's result.json and write its report into OUT (then: bstune report OUT)"
    )
    fetch.add_argument("job_id", help="the id `bstune submit` printed")
    fetch.add_argument("out", help="folder to write result.json and the report into")
    fetch.add_argument("--address", required=True, help="the cluster's dashboard address, e.g. http://head:8265")
    fetch.set_defaults(handler=_cmd_fetch)

    probe = sub.add_parser(
        "probe",
        help="measure noise scale, LR ceiling and throughput; print the prior",
        description="Run only the probe of a study and show the prior it implies.",
    )
    probe.add_argument("script", help="Python file defining make_task() -> bstune.Task")
    probe.add_argument("--space", required=True, help="search-space YAML file (see search_spaces/)")
    probe.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    probe.add_argument("--device", default="auto", help="cpu, cuda, ... (default: CUDA when available)")
    probe.add_argument("--out", default=None, help="folder to write probe.json into")
    probe.set_defaults(handler=_cmd_probe)

    report = sub.add_parser(
        "report",
        help="analyse a finished study: B_crit, compute-optimal batch size, gap, recommendation",
        description="Read FOLDER/result.json written by `bstune run --out`, fit the critical batch size, "
        "and write report.json, report.md and report.html (with plots).",
    )
    report.add_argument("folder", help="the --out folder of `bstune run`")
    report.add_argument(
        "--target-metric",
        default="train_loss",
        help="metric whose steps-to-target give S(B) and B_crit (default train_loss)",
    )
    report.add_argument(
        "--target-value",
        type=float,
        default=None,
        help="the target; default: the hardest value two thirds of the batch sizes reach",
    )
    report.add_argument(
        "--workers", type=_positive_int, default=1, help="data-parallel workers for the wall-time optimum (default 1)"
    )
    report.add_argument(
        "--out", default=None, help="where to write report.json, report.md and report.html (default FOLDER)"
    )
    report.set_defaults(handler=_cmd_report)

    noise = sub.add_parser(
        "noise",
        help="measure the gradient noise scale B_simple of a task",
        description="Estimate B_simple = tr(Σ)/|G|² with a confidence interval (McCandlish et al. 2018). "
        "B_simple depends on where training is: use --train-samples to measure after some training.",
    )
    noise.add_argument("script", help="Python file defining make_task() -> bstune.Task")
    noise.add_argument(
        "--batch-size",
        type=_positive_int,
        default=64,
        help="examples per measurement batch (default 64); pick one near the B_simple you expect",
    )
    noise.add_argument(
        "--method",
        choices=["per_example", "micro_batch"],
        default="per_example",
        help="per-example gradients (exact per batch; not for BatchNorm) or micro-batch gradients "
        "(what accumulation gives); default per_example",
    )
    noise.add_argument(
        "--rel-precision",
        type=_positive_float,
        default=0.1,
        help="stop when the interval's half-width is within this fraction of the estimate (default 0.1)",
    )
    noise.add_argument(
        "--max-samples",
        type=_positive_int,
        default=None,
        help="most examples to spend on the measurement (default 200 batches)",
    )
    noise.add_argument("--confidence", type=float, default=0.9, help="interval level (default 0.9)")
    noise.add_argument(
        "--train-samples",
        type=_positive_int,
        default=None,
        help="first train a fresh model for this many samples, then measure at its parameters",
    )
    noise.add_argument("--train-batch-size", type=_positive_int, default=64, help="batch size of that training")
    noise.add_argument("--lr", type=_positive_float, default=0.05, help="learning rate of that training")
    noise.add_argument("--seed", type=int, default=0, help="seed for model init and batch draws (default 0)")
    noise.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    noise.add_argument("--out", default=None, help="folder to write noise_scale.json into")
    noise.set_defaults(handler=_cmd_noise)

    train = sub.add_parser(
        "train",
        help="run one training config and print its learning curve",
        description="Train once with the given config; budgets are in samples (examples processed).",
    )
    train.add_argument("script", help="Python file defining make_task() -> bstune.Task")
    train.add_argument("--batch-size", type=_positive_int, required=True, help="examples per optimizer step")
    train.add_argument("--lr", type=_positive_float, required=True, help="peak learning rate")
    train.add_argument("--max-samples", type=_positive_int, required=True, help="training budget in samples")
    train.add_argument("--momentum", type=float, default=None, help="SGD momentum (default: the task's)")
    train.add_argument("--weight-decay", type=float, default=None, help="weight decay (default: the task's)")
    train.add_argument("--warmup-samples", type=int, default=0, help="linear warmup length in samples (default 0)")
    train.add_argument(
        "--schedule",
        choices=["constant", "cosine", "linear"],
        default="constant",
        help="decay after warmup (default constant)",
    )
    train.add_argument(
        "--eval-every",
        type=_positive_int,
        default=None,
        help="samples between evaluations (default: a tenth of the budget)",
    )
    train.add_argument(
        "--micro-batch-size",
        type=_positive_int,
        default=None,
        help="gradient accumulation: examples per forward/backward pass",
    )
    train.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)")
    train.add_argument("--track-noise", action="store_true", help="record the B_simple trajectory while training")
    train.add_argument("--seed", type=int, default=0, help="seed for init and data order (default 0)")
    train.add_argument("--device", default="auto", help="cpu, cuda, ... (default: CUDA when available)")
    train.add_argument("--out", default=None, help="folder to write train.json into")
    train.set_defaults(handler=_cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bstune`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"bstune: error: {exc}", file=sys.stderr)
        return 2
    except BstuneError as exc:
        print(f"bstune: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
