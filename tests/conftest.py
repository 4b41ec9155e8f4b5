"""Shared small problems with known answers, and the forked command-line runner."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import bstune
from tests.cli.cli_runner import ForkedCli


def make_classification(n: int = 400, d: int = 8, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs: a linearly separable-ish problem with label noise."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=gen) * 1.5
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centers[y] + torch.randn(n, d, generator=gen)
    return x, y


def small_mlp(d: int = 8, hidden: int = 16, classes: int = 3) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, classes))


def accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out.argmax(-1) == y).float().mean()


@pytest.fixture
def blob_task() -> bstune.Task:
    x, y = make_classification(n=520)  # one draw, split: validation comes from the same distribution
    x, xv, y, yv = x[:400], x[400:], y[:400], y[400:]
    return bstune.Task(
        model=small_mlp,
        train_data=(x, y),
        val_data=(xv, yv),
        loss=torch.nn.CrossEntropyLoss(),
        metrics={"accuracy": accuracy},
        name="blobs",
    )


@pytest.fixture(scope="session")
def forked_cli() -> Iterator[ForkedCli]:
    """``bstune`` commands in forks of one process that imported the command line (tests/cli/cli_runner.py)."""
    runner = ForkedCli()
    yield runner
    runner.close()
