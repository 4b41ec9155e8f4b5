"""A study in its own process, for the kill-and-resume tests: python study_runner.py STORAGE N_TRIALS."""

from __future__ import annotations

import sys

import torch

import bstune
from tests.conftest import make_classification, small_mlp

SPACE = {"name": "blobs", "batch_size": {"min": 4, "max": 128}, "lr": {"min": 1e-3, "max": 3.0}}


def make_task() -> bstune.Task:
    x, y = make_classification(n=520)
    return bstune.Task(
        model=small_mlp,
        train_data=(x[:400], y[:400]),
        val_data=(x[400:], y[400:]),
        loss=torch.nn.CrossEntropyLoss(),
        name="blobs",
    )


def make_study(storage: str, n_trials: int) -> bstune.Study:
    return bstune.Study(
        make_task(),
        SPACE,
        n_trials=n_trials,
        budget_samples=12_000,
        seed=0,
        storage=storage,
        mode="baseline",
        pruner="none",
        n_evals=4,
        progress=False,
    )


if __name__ == "__main__":
    make_study(sys.argv[1], int(sys.argv[2])).run()
