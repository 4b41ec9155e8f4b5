"""A small convolutional network on scikit-learn's 8x8 handwritten digits.

The same data, split and optimizer as ``digits_mlp.py``, with each example shaped as a
one-channel 8x8 image: two 3x3 convolutions (8 and 16 channels, ReLU), a 2x2 max-pool,
and a linear layer to the 10 classes (~3.6k parameters). No BatchNorm, so per-example
gradients (and the ``per_example`` noise estimator) are defined in train mode.

Run it with::

    python examples/digits_cnn.py --out runs/digits_cnn

It trains briefly with ``track_noise=True``, measures B_simple at the trained
parameters against the exact full-dataset value, and writes ``<out>/noise_scale.json``.
"""

from __future__ import annotations

import argparse
import json
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


def make_cnn(channels: int = 8) -> nn.Module:
    """(N, 1, 8, 8) -> (N, 10): conv3x3(c) -> ReLU -> conv3x3(2c) -> ReLU -> maxpool2 -> linear."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),  # (N, c, 8, 8)
        nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),  # (N, 2c, 8, 8)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 2c, 4, 4)
        nn.Flatten(),
        nn.Linear(2 * channels * 16, 10),
    )


def make_task(channels: int = 8) -> bstune.Task:
    """The digits problem as images: 1437 training and 360 validation 1x8x8 images, 10 classes."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train = int(0.8 * len(x))  # the same split as digits_mlp.py
    train_idx, val_idx = perm[:n_train], perm[n_train:]
    default_channels = channels

    def model(channels: int = default_channels) -> nn.Module:  # a factory: a fresh model per call
        return make_cnn(channels)

    return bstune.Task(
        model=model,
        train_data=(x[train_idx], y[train_idx]),
        val_data=(x[val_idx], y[val_idx]),
        loss=nn.CrossEntropyLoss(),  # reduction="mean"
        metrics={"accuracy": bstune.Metric(accuracy, direction="maximize")},
        optimizer=bstune.OptimizerSpec("sgd", momentum=0.9),
        name="digits_cnn",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/digits_cnn", help="directory for noise_scale.json")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default: 64)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default: 0.05)")
    parser.add_argument("--max-samples", type=int, default=6_000, help="training budget in examples (default: 6000)")
    parser.add_argument("--seed", type=int, default=0, help="model init, data order and estimator batches")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    task = make_task()
    config = bstune.TrainConfig(
        batch_size=args.batch_size,
        lr=args.lr,
        max_samples=args.max_samples,
        track_noise=True,
        seed=args.seed,
        device="cpu",
    )
    run = bstune.train(task, config)
    final = run.final
    assert final is not None and run.model is not None
    print(f"trained {run.samples} samples: {run.status.value}, val loss {final.val_loss:.3f}")
    est = bstune.measure_noise_scale(task, model=run.model, batch_size=64, rel_precision=0.2, seed=args.seed)
    exact = bstune.exact_noise_scale(task, run.model)
    print(f"per_example: {est}\nexact: B_simple = {exact.b_simple:.4g}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"task": task.name, "estimate": est.to_dict(), "exact": exact.to_dict(), "run": run.to_dict()}
    (out / "noise_scale.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out / 'noise_scale.json'} ({time.perf_counter() - started:.1f}s)")


if __name__ == "__main__":
    main()
