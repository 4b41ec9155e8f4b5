"""Tune your own PyTorch training loop: no Task, no reshaping, a few calls to ``ctx``.

The loop below is what a training script usually looks like: a ``Dataset`` whose
``__getitem__`` augments each image (random shifts and pixel noise, run in DataLoader
worker processes), a model that returns its own loss (as most language models do),
an optimizer built by hand, gradient clipping, an evaluation at intervals. bstune tunes
it through the trial context ``ctx``:

- ``ctx.config``: the batch size, learning rate and the search space's other parameters;
- ``ctx.loader(dataset, num_workers=2)``: the training stream, in batches of the trial's size;
- ``ctx.lr_scheduler(opt)``: the trial's warmup and decay (and the probe's LR ramp);
- ``ctx.noise_tracker(model)``: the gradient noise scale from your own backward pass;
- ``ctx.step(loss)``, ``ctx.at_milestone()``, ``ctx.report(...)``: samples counted, the
  study's milestones, early stopping.

Run it with::

    bstune run examples/own_loop.py --space search_spaces/mlp_classifier.yaml --trials 8 --out runs/own

or ``python examples/own_loop.py --out runs/own`` (the same study from Python).
"""

from __future__ import annotations

import argparse
import functools
import logging
from typing import Any, NamedTuple

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

import bstune

SPLIT_SEED = 0


@functools.cache
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as (train images, train labels, val images, val labels), images in [0, 1]."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train = int(0.8 * len(x))
    return x[perm[:n_train]], y[perm[:n_train]], x[perm[n_train:]], y[perm[n_train:]]


class AugmentedDigits(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Training images, each shifted by up to one pixel and lightly noised when fetched."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        dx, dy = torch.randint(-1, 2, (2,)).tolist()  # DataLoader workers seed torch for us
        image = torch.roll(self.images[i], shifts=(dy, dx), dims=(1, 2))
        return (image + 0.05 * torch.randn_like(image)).clamp(0, 1), self.labels[i]


class Output(NamedTuple):
    loss: torch.Tensor
    logits: torch.Tensor


class Net(nn.Module):
    """A small MLP over the flattened image that returns its own loss when given labels."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Output:
        logits = self.body(x)
        loss = F.cross_entropy(logits, y) if y is not None else logits.new_zeros(())
        return Output(loss, logits)


@torch.no_grad()
def evaluate(model: Net, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean loss, accuracy) on un-augmented images."""
    model.eval()
    out = model(x, y)
    model.train()
    return float(out.loss), float((out.logits.argmax(1) == y).float().mean())


def train(ctx: bstune.TrialContext) -> None:
    """One trial: the training loop as you would write it, plus a few calls to ``ctx``."""
    cfg = ctx.config
    train_x, train_y, val_x, val_y = digits()
    model = Net(hidden=cfg.get("model.hidden", 64)).to(ctx.device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=cfg.get("weight_decay", 0.0))
    sched = ctx.lr_scheduler(opt)
    noise = ctx.noise_tracker(model)
    # train loss for the generalization gap: a fixed subset of the training images, not augmented
    probe_x, probe_y = train_x[:360].to(ctx.device), train_y[:360].to(ctx.device)
    for x, y in ctx.loader(AugmentedDigits(train_x, train_y), num_workers=2, persistent_workers=True):
        out = model(x.to(ctx.device), y.to(ctx.device))
        opt.zero_grad()
        out.loss.backward()
        noise.observe()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        ctx.step(out.loss)
        if ctx.at_milestone():
            val_loss, val_accuracy = evaluate(model, val_x.to(ctx.device), val_y.to(ctx.device))
            train_loss, _ = evaluate(model, probe_x, probe_y)
            ctx.report(val_loss=val_loss, val_accuracy=val_accuracy, train_loss=train_loss)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/own_loop", help="where the report goes")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--budget-samples", type=int, default=20_000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    study = bstune.Study(
        train, space="search_spaces/mlp_classifier.yaml", n_trials=args.trials, budget_samples=args.budget_samples
    )
    result = study.run()
    result.report().save(args.out)
    print(f"best config: {result.best_config}; report in {args.out}")
    return result.best_config


if __name__ == "__main__":
    main()
