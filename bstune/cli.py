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
import contextlib
import logging
import math
import os
import sys
from collections.abc import Sequence

from bstune import __version__
from bstune._interrupts import ctrl_c_held
from bstune.errors import BstuneError, ConfigError

__all__ = ["build_parser", "main", "run_command"]


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


def _devices(text: str) -> str | list[str]:
    """``all`` -> ``"all"``; ``cuda:0,cuda:1`` -> ``["cuda:0", "cuda:1"]`` (checked by the study)."""
    return "all" if text.strip() == "all" else [part.strip() for part in text.split(",")]


class _DefaultsFormatter(argparse.HelpFormatter):
    """Adds ``(default X)`` to an option's help unless the help already says what its default is.

    Options without a value to show (``None``: the help explains; flags: off) are left as they are.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            not action.option_strings
            or action.default is None
            or action.default is False
            or action.default is argparse.SUPPRESS
            or "default" in text
        ):
            return action.help
        return f"{text} (default %(default)s)"


def _check_device(args: argparse.Namespace) -> None:
    """Refuse a ``--device`` that names no torch device, or one this machine lacks, before any work starts.

    On the Ray backend the trials run on the cluster's workers: only the name is checked.
    """
    device = getattr(args, "device", "auto")
    if device == "auto":
        return
    from bstune.noise import resolve_device

    try:
        resolve_device(device, check_available=getattr(args, "backend", None) != "ray")
    except ConfigError as exc:
        raise ConfigError(exc.reason, source="argument --device") from None


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
        "Trials are stored as they finish; --resume continues an interrupted study (Ctrl-C or killed). "
        "With --out, the report is written there at the end.",
    )
    run.add_argument("script", help="Python file defining make_task() -> bstune.Task or train(ctx)")
    run.add_argument("--space", required=True, help="search-space YAML file (see search_spaces/)")
    run.add_argument("--trials", type=_positive_int, default=40, help="trials to finish (default 40)")
    run.add_argument(
        "--budget-samples",
        type=_positive_int,
        default=300_000,
        help="training samples of one full trial (default 300000); pruned trials use less",
    )
    run.add_argument(
        "--n-evals",
        type=_positive_int,
        default=9,
        metavar="N",
        help="evaluations of a full trial, at equal sample milestones: the pruner decides at them, and a trial at the "
        "space's largest batch size needs at least N steps (default 9: Hyperband's rungs at 1/9 and 1/3 of the budget)",
    )
    run.add_argument(
        "--out", default=None, help="folder for study.db (the trials), result.json and the report (report.md, ...)"
    )
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
        help="more seeds per re-scored trial, full budget each; their samples count in the total; 0: off, as "
        "--rescore-top 0 (default 2)",
    )
    run.add_argument(
        "--critical-batch",
        choices=("fit", "measure"),
        default="fit",
        help="fit: B_crit from the trials' learning curves (default); measure: also measure it directly after the "
        "search, by branches from the recommended config (tens of trials' samples; see `bstune crit`)",
    )
    run.add_argument(
        "--objective",
        default="val_loss",
        metavar="NAME",
        help="what the study optimizes: val_loss, train_loss, or a metric the task records / the function reports "
        "(val_accuracy, ...) (default val_loss)",
    )
    run.add_argument(
        "--direction",
        choices=["minimize", "maximize"],
        default=None,
        help="only for an objective whose name does not say which way is better (default: from the metric)",
    )
    run.add_argument("--seed", type=int, default=0, help="seed for the sampler, the probe and the trials (default 0)")
    run.add_argument("--device", default="auto", help="trial device: cpu, cuda, ... (default: CUDA when available)")
    run.add_argument(
        "--num-workers",
        type=int,
        default=0,
        metavar="N",
        help="DataLoader worker processes loading each trial's training batches (same batches, same values); "
        "0: in the trial's process (default 0)",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr for the probe, the trials and the re-scoring (default: when stderr is a terminal)",
    )
    run.add_argument(
        "--parallel-trials",
        type=int,
        default=None,
        metavar="K",
        help="trials at once, each in a worker process of its own on --device, sharing the storage (not "
        "--num-workers, which loads one trial's batches) (default 1: one after the other in this process)",
    )
    run.add_argument(
        "--devices",
        type=_devices,
        default=None,
        metavar="LIST",
        help="one trial per device at once: all (every GPU) or cuda:0,cuda:1,... (default: every trial on --device)",
    )
    run.add_argument(
        "--devices-per-trial",
        type=int,
        default=1,
        metavar="K",
        help="devices (processes) each trial trains on, data-parallel (DDP; the batch size is the global one); "
        "with --devices, dealt out K at a time (default 1)",
    )
    ray_opts = run.add_argument_group("Ray backend (--backend ray; needs the ray extra)")
    ray_opts.add_argument(
        "--backend",
        choices=["optuna", "ray"],
        default="optuna",
        help="optuna: trials in this process (default); ray: Ray Tune on a cluster, ASHA on training samples",
    )
    ray_opts.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto, HOST:6379 or ray://HOST:10001 (default: as Ray does, RAY_ADDRESS, else the "
        "cluster `ray start` started on this machine, else a new local Ray instance; 'local' always a new one)",
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
    run.set_defaults(handler="cmd_run")

    submit = sub.add_parser(
        "submit",
        help="submit a study to a Ray cluster as a job (Ray Jobs API) and print the job id",
        description="Package SCRIPT and the space file, submit `bstune run --backend ray` as a Ray job, and detach. "
        "Follow it with `bstune status JOB` and fetch its result with `bstune fetch JOB OUT`.",
    )
    submit.add_argument("script", help="Python file defining make_task() -> bstune.Task or train(ctx)")
    submit.add_argument("--space", required=True, help="search-space YAML file (see search_spaces/)")
    submit.add_argument("--address", required=True, help="the cluster's dashboard address, e.g. http://head:8265")
    submit.add_argument("--trials", type=_positive_int, default=40, help="trials to finish (default 40)")
    submit.add_argument("--budget-samples", type=_positive_int, default=300_000, help="samples of one full trial")
    submit.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    submit.add_argument("--mode", choices=["prior", "baseline"], default="prior", help="search mode (default prior)")
    submit.add_argument(
        "--resources", type=_resources, default=None, help="per trial, e.g. gpu=1 (default: 1 GPU if any, else 1 CPU)"
    )
    submit.add_argument(
        "--max-concurrent", type=_positive_int, default=None, help="trials at once (default: all that fit)"
    )
    submit.add_argument("--python", default="python", help="the cluster's interpreter with bstune installed")
    submit.set_defaults(handler="cmd_submit")

    job_status = sub.add_parser(
        "status",
        help="status of a submitted study (PENDING, RUNNING, SUCCEEDED, FAILED)",
        description="Print the state of a study submitted with `bstune submit`: PENDING, RUNNING, SUCCEEDED, "
        "FAILED or STOPPED.",
    )
    job_status.add_argument("job_id", help="the id `bstune submit` printed")
    job_status.add_argument("--address", required=True, help="the cluster's dashboard address, e.g. http://head:8265")
    job_status.set_defaults(handler="cmd_status")

    fetch = sub.add_parser(
        "fetch",
        help="fetch a finished job's result.json and write its report into OUT (then: bstune report OUT)",
        description="Download the result.json of a study submitted with `bstune submit` once its job has "
        "finished, and write it with its report (report.json, report.md, report.html) into OUT.",
    )
    fetch.add_argument("job_id", help="the id `bstune submit` printed")
    fetch.add_argument("out", help="folder to write result.json and the report into")
    fetch.add_argument("--address", required=True, help="the cluster's dashboard address, e.g. http://head:8265")
    fetch.set_defaults(handler="cmd_fetch")

    probe = sub.add_parser(
        "probe",
        help="measure noise scale, LR ceiling and throughput; print the prior",
        description="Run only the probe of a study and show the prior it implies.",
    )
    probe.add_argument("script", help="Python file defining make_task() -> bstune.Task or train(ctx)")
    probe.add_argument("--space", required=True, help="search-space YAML file (see search_spaces/)")
    probe.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    probe.add_argument("--device", default="auto", help="cpu, cuda, ... (default: CUDA when available)")
    probe.add_argument(
        "--budget-samples",
        type=_positive_int,
        default=None,
        help="a study's trial budget, as bstune run takes it: the probe's run is then one trial long, as that "
        "study's first trial, and B_simple is measured where that study's probe measures it (at one trial's length "
        "where a trial is shorter than the probe's own run). A task's probe trains the whole budget, so give a "
        "budget only to see a short-budget study's prior (default: the probe's own length, which bstune run's "
        "default budget gives)",
    )
    probe.add_argument(
        "--n-evals", type=_positive_int, default=9, metavar="N", help="with --budget-samples: as bstune run takes it"
    )
    probe.add_argument("--out", default=None, help="folder to write probe.json into")
    probe.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr for each phase of the probe (default: when stderr is a terminal)",
    )
    probe.set_defaults(handler="cmd_probe")

    report = sub.add_parser(
        "report",
        help="analyse a finished study: B_crit, compute-optimal batch size, gap, recommendation",
        description="Read FOLDER/result.json written by `bstune run --out`, fit the critical batch size, "
        "and write report.json, report.md and report.html (with plots).",
    )
    report.add_argument("folder", help="the --out folder of `bstune run`")
    report.add_argument(
        "--target-metric",
        default=None,
        help="metric whose steps-to-target give S(B) and B_crit (default train_loss)",
    )
    report.add_argument(
        "--target-value",
        type=float,
        default=None,
        help="the target; default: the hardest value two thirds of the batch sizes reach, or a harder one "
        "where they reach that by their first evaluation (bstune.analysis.choose_target)",
    )
    report.add_argument(
        "--target-direction",
        choices=("minimize", "maximize"),
        default=None,
        help="whether --target-metric is reached from above (minimize, a loss) or below (maximize, an accuracy), "
        "where the result does not say (a training function's study knows its objective's and the losses' only)",
    )
    report.add_argument(
        "--workers", type=_positive_int, default=1, help="data-parallel workers for the wall-time optimum (default 1)"
    )
    report.add_argument(
        "--out", default=None, help="where to write report.json, report.md and report.html (default FOLDER)"
    )
    report.add_argument(
        "--all-trials",
        action="store_true",
        help="list every trial in the printed summary (default: the 10 best, then a count); "
        "the report files list them all",
    )
    report.set_defaults(handler="cmd_report")

    crit = sub.add_parser(
        "crit",
        help="measure the critical batch size directly, from a finished study's recommended config",
        description="Train the recommended config of FOLDER/result.json (written by `bstune run --out`) in segments, "
        "branch from each checkpoint at a ladder of batch sizes and two seeds until each reaches the loss the "
        "reference reached next, and fit S(B) = S_min(1 + B_crit/B) per segment and for the whole run. Costs tens "
        "of trials' samples. Writes FOLDER/critical.json, adds the measurement to result.json and rewrites the "
        "report, whose critical-batch section then leads with it.",
    )
    crit.add_argument("script", help="the Python file the study ran: it defines make_task() -> bstune.Task")
    crit.add_argument("folder", help="the --out folder of `bstune run`")
    crit.add_argument(
        "--batch-min", type=_positive_int, default=None, help="smallest batch size to branch at (default: the study's)"
    )
    crit.add_argument(
        "--batch-max", type=_positive_int, default=None, help="largest batch size to branch at (default: the study's)"
    )
    crit.add_argument("--device", default="auto", help="cpu, cuda, ... (default: CUDA when available)")
    crit.add_argument("--again", action="store_true", help="measure again even if result.json holds a measurement")
    crit.set_defaults(handler="cmd_crit")

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
    noise.set_defaults(handler="cmd_noise")

    train = sub.add_parser(
        "train",
        help="run one training config and print its learning curve",
        description="Train once with the given config; budgets are in samples (examples processed). "
        "--config takes a study's recommended config (report.json or result.json), --param sets any "
        "hyperparameter a search space can (model.<kwarg> included); explicit options override the file.",
    )
    train.add_argument("script", help="Python file defining make_task() -> bstune.Task")
    train.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="start from the recommended config of a study: its report.json or result.json",
    )
    train.add_argument(
        "--param",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="a hyperparameter as a search space names it (momentum, weight_decay, warmup_fraction, schedule, "
        "final_lr_ratio, grad_clip, model.<kwarg> for the model factory); repeatable; overrides --config",
    )
    train.add_argument(
        "--batch-size", type=_positive_int, default=None, help="examples per optimizer step (required without --config)"
    )
    train.add_argument(
        "--lr", type=_positive_float, default=None, help="peak learning rate (required without --config)"
    )
    train.add_argument(
        "--max-samples",
        type=_positive_int,
        default=None,
        help="training budget in samples (default: the study's budget with --config, else required)",
    )
    train.add_argument("--momentum", type=float, default=None, help="SGD momentum (default: the task's)")
    train.add_argument("--weight-decay", type=float, default=None, help="weight decay (default: the task's)")
    train.add_argument("--warmup-samples", type=int, default=None, help="linear warmup length in samples (default 0)")
    train.add_argument(
        "--schedule",
        choices=["constant", "cosine", "linear"],
        default=None,
        help="decay after warmup (default constant)",
    )
    train.add_argument(
        "--eval-every",
        type=_positive_int,
        default=None,
        help="samples between evaluations (default: the study's, with --config at its budget; else a tenth)",
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
    train.add_argument(
        "--num-workers",
        type=int,
        default=0,
        metavar="N",
        help="DataLoader worker processes loading the training batches (same batches, same values); "
        "0: in-process (default 0)",
    )
    train.add_argument("--out", default=None, help="folder to write train.json into")
    train.set_defaults(handler="cmd_train")
    for each in (parser, *sub.choices.values()):  # every option's help shows its default
        each.formatter_class = _DefaultsFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bstune`` console script; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:  # as run_command answers it, from the first instant on
        print("bstune: interrupted", file=sys.stderr)
        return 130
    args.command_line = list(sys.argv[1:] if argv is None else argv)  # to say how to continue after Ctrl-C
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command with the CLI's logging and exit codes (also the cluster job's entry point)."""
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        # the commands pull in PyTorch and Optuna (seconds): imported here, where Ctrl-C is answered
        with ctrl_c_held():
            from bstune import _commands

        _check_device(args)
        return int(getattr(_commands, args.handler)(args))
    except ConfigError as exc:
        print(f"bstune: error: {exc}", file=sys.stderr)
        return 2
    except BstuneError as exc:
        trace = getattr(exc, "traceback", None)  # the user code's, kept by UserCodeError and StudyFailedError
        if trace and args.verbose:
            print(trace.rstrip(), file=sys.stderr)
        hint = " (run with -v to see its traceback)" if trace and not args.verbose else ""
        print(f"bstune: {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bstune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bstune report FOLDER | head`: the reader is gone, so is the rest of the output
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # stdout's: Python's flush at exit would raise again
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141  # as a shell reports a process ended by SIGPIPE
        raise  # another pipe's (a worker's): not the reader's going


if __name__ == "__main__":
    raise SystemExit(main())
