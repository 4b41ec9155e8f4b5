"""Tune a Lightning ``LightningModule``: the module as you would write it, one call to ``fit``.

``LitDigits`` is a plain LightningModule (an MLP on scikit-learn's 8x8 digits, SGD with
momentum, ``self.log`` of the validation loss and accuracy). ``train(ctx)`` builds it from
the trial's settings and hands it to :func:`bstune.integrations.lightning.fit`, which makes
the ``lightning.Trainer`` for the trial: the batches of ``ctx.loader``, the trial's learning
rate schedule (and the probe's LR ramp), validation at the study's sample milestones, the
noise tracker on the module's gradients, early stopping by the study's pruner.

The second validation loader, a fixed subset of the training images, gives ``train_loss``,
which the report compares with ``val_loss`` (the generalization gap).

Run it with (``pip install 'bstune[lightning]'``)::

    bstune run examples/lightning_digits.py --space search_spaces/mlp_classifier.yaml --trials 8 --out runs/lit

or ``python examples/lightning_digits.py --out runs/lit`` (the same study from Python).
"""

from __future__ import annotations

import argparse
import functools
import logging
from typing import Any

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import bstune
from bstune.integrations.lightning import fit

SPLIT_SEED = 0


@functools.cache
def digits() -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 8x8 digits, pixels in [0, 1]: (1437 training, 360 validation) examples."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train = int(0.8 * len(x))
    train, val = perm[:n_train], perm[n_train:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


class LitDigits(pl.LightningModule):
    """An MLP 64 -> hidden -> 10 with cross-entropy, trained by SGD with momentum."""

    def __init__(self, hidden: int = 64, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)  # bstune reads the returned loss

    def validation_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        if dataloader_idx == 0:  # the validation set
            self.log("val_loss", loss, add_dataloader_idx=False)
            self.log("val_accuracy", (logits.argmax(1) == y).float().mean(), add_dataloader_idx=False)
        else:  # a fixed subset of the training set, for the generalization gap
            self.log("train_loss", loss, add_dataloader_idx=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams  # what __init__ was given (save_hyperparameters)
        return torch.optim.SGD(self.parameters(), lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])


def train(ctx: bstune.TrialContext) -> None:
    """One trial: the module from the trial's settings, fitted by a Trainer that bstune makes."""
    cfg = ctx.config
    train_set, val_set = digits()
    module = LitDigits(
        hidden=cfg.get("model.hidden", 64),
        lr=cfg["lr"],
        momentum=ctx.momentum,
        weight_decay=cfg.get("weight_decay", 0.0),
    )
    val_loaders = [
        DataLoader(val_set, batch_size=len(val_set)),
        DataLoader(torch.utils.data.Subset(train_set, range(360)), batch_size=360),
    ]
    fit(ctx, module, train_set, val_dataloaders=val_loaders)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/lightning_digits", help="where the report goes")
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
