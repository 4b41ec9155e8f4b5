"""Measure the gradient noise scale of a small MLP on scikit-learn's handwritten digits.

This is the smallest end-to-end bstune example, and what `make run` executes:

1. build a :class:`bstune.Task` (an MLP 64 -> hidden -> 10 on the 8x8 ``load_digits``
   images, fixed 80/20 split, cross-entropy loss, accuracy metric);
2. train it briefly at a sane learning rate with ``track_noise=True``, which gives the
   B_simple trajectory for free from the two halves of every training batch;
3. at the trained parameters, estimate B_simple with both estimators
   (``per_example`` and ``micro_batch``) and compare them with the exact value
   computed from every per-example gradient of the training set (cheap here: 1437
   examples, ~5k parameters);
4. write everything to ``<out>/noise_scale.json``.

Run it with::

    python examples/digits_mlp.py --out runs/digits

It takes a few seconds on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

import bstune

SPLIT_SEED = 0  # the train/val split never changes, whatever --seed says


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of examples whose largest logit is the target class (batch mean)."""
    return (logits.argmax(dim=1) == targets).float().mean()


def make_task(hidden: int = 64) -> bstune.Task:
    """The digits problem: 1437 training and 360 validation images, 10 classes."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # pixel intensities 0..16 -> [0, 1]
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train = int(0.8 * len(x))
    train_idx, val_idx = perm[:n_train], perm[n_train:]

    default_hidden = hidden

    def model(hidden: int = default_hidden) -> nn.Module:  # a factory: a fresh model per call;
        # `hidden` can be searched (search_spaces/mlp_classifier.yaml: model.hidden)
        return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    return bstune.Task(
        model=model,
        train_data=(x[train_idx], y[train_idx]),
        val_data=(x[val_idx], y[val_idx]),
        loss=nn.CrossEntropyLoss(),  # reduction="mean": the batch mean, as bstune needs
        metrics={"accuracy": bstune.Metric(accuracy, direction="maximize")},
        # Heavy-ball momentum 0.9 is how SGD is used in practice, and the trajectory's
        # temperature T = lr / (B (1 - m)) then shows how momentum multiplies the
        # effective step. The noise scale itself is a property of the gradients at
        # the current parameters and does not depend on the optimizer.
        optimizer=bstune.OptimizerSpec("sgd", momentum=0.9),
        name="digits_mlp",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/digits", help="directory for noise_scale.json (default: runs/digits)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units of the MLP (default: 64)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default: 64)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default: 0.05)")
    parser.add_argument(
        "--max-samples", type=int, default=6_000, help="training budget in examples, ~4 epochs (default: 6000)"
    )
    parser.add_argument(
        "--measure-batch", type=int, default=64, help="batch size of the noise estimators (default: 64)"
    )
    parser.add_argument(
        "--rel-precision",
        type=float,
        default=0.2,
        help="stop drawing estimator batches once the 90%% CI half-width is this fraction of B_simple (default: 0.2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="model init, data order and estimator batches (default: 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; this model is too small to gain from more (default: 1)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    task = make_task(hidden=args.hidden)
    print(f"task {task.name}: {task.n_train} train / {task.n_val} val examples")

    # -- 1. train briefly, tracking B_simple from the training batches ----------------
    config = bstune.TrainConfig(
        batch_size=args.batch_size,
        lr=args.lr,
        max_samples=args.max_samples,
        eval_every_samples=1_000,  # one B_simple window per ~15 steps
        eval_at_start=True,
        track_noise=True,
        seed=args.seed,
        device="cpu",
    )
    run = bstune.train(task, config)
    final = run.final
    assert final is not None
    print(
        f"trained {run.samples} samples ({run.steps} steps) in {run.wall_time_s:.1f}s: status {run.status.value}, "
        f"val loss {final.val_loss:.3f}, val accuracy {final.metrics['val_accuracy']:.3f}"
    )
    print("\nB_simple during training (two halves of each batch, pooled between evaluations):")
    print(f"{'samples':>8} {'B_simple':>10} {'90% CI':>21} {'temperature':>12}")
    for point in run.noise_trajectory:
        lo, hi = point.ci
        print(f"{point.samples:>8} {point.b_simple:>10.1f} {f'[{lo:.1f}, {hi:.1f}]':>21} {point.temperature:>12.2e}")

    # -- 2. measure at the trained parameters, both estimators vs the exact value -----
    model = run.model
    assert model is not None
    estimates = {}
    for method in ("per_example", "micro_batch"):
        t0 = time.perf_counter()
        # Each batch of 64 resolves |G|^2 only roughly when B_simple is well above 64, so
        # the interval narrows slowly: ask for 20%, up to 200 batches (the default cap).
        est = bstune.measure_noise_scale(
            task,
            model=model,
            batch_size=args.measure_batch,
            method=method,
            rel_precision=args.rel_precision,
            seed=args.seed,
        )
        estimates[method] = est
        print(f"\n{method:>12}: {est}  [{time.perf_counter() - t0:.1f}s]")
    exact = bstune.exact_noise_scale(task, model)
    print(
        f"{'exact':>12}: B_simple = {exact.b_simple:.4g}  (every per-example gradient of {exact.n_examples} examples)"
    )
    # Both estimators drew the same batches (same seed), so their errors are correlated;
    # a 90% interval misses the exact value one time in ten.
    for method, est in estimates.items():
        lo, hi = est.ci
        inside = "inside" if lo <= exact.b_simple <= hi else "outside"
        print(f"{method:>12}: {est.b_simple / exact.b_simple - 1:+.1%} from exact, {inside} its 90% CI")
    print("(a 90% interval misses the exact value about one time in ten; both methods drew the same batches here)")

    # -- 3. write the summary ----------------------------------------------------------
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "task": task.name,
        "n_train": task.n_train,
        "estimates": {method: est.to_dict() for method, est in estimates.items()},
        "exact": exact.to_dict(),
        "run": run.to_dict(),
    }
    path = out / "noise_scale.json"
    path.write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {path} ({time.perf_counter() - started:.1f}s in all)")


if __name__ == "__main__":
    main()
