"""The ``bstune`` command line.

    bstune noise SCRIPT        measure the gradient noise scale of SCRIPT's task
    bstune train SCRIPT        run one training config and print its learning curve

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bstune",
        description="Batch-size and learning-rate tuning for PyTorch, shaped by the gradient noise scale.",
    )
    parser.add_argument("--version", action="version", version=f"bstune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO level) to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
