"""The blobs task and search space shared by the study tests and the reliability workers (tests/reliability/worker.py)."""

from __future__ import annotations

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
