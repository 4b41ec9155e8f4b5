"""The order in which a trial sees its training examples, shared by the trainer and the trial context.

A trial's training stream is a seeded permutation of the training set per epoch, cut into
batches of ``batch_size``; the tail of each epoch that does not fill a batch is dropped, so
every step holds exactly ``batch_size`` examples (the sample counter and the
finite-population correction of the noise-scale estimators rely on it). The permutations
come from a :class:`torch.Generator` of their own, seeded with the trial's ``seed + 1``
(the model's initialisation uses ``seed``), so the order depends on the seed alone: not on
the global RNG, the model, or how many worker processes load the examples.

:func:`epoch_batches` yields the indices as tensors (the trainer fetches in-process from
them); :class:`EpochBatchSampler` yields the same indices as lists of ints, as the
``batch_sampler`` of a :class:`~torch.utils.data.DataLoader`, so worker processes load
exactly the examples bstune chose, in its order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EpochBatchSampler", "epoch_batches"]


def epoch_batches(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless batches of indices into ``range(n)``: one permutation per epoch, the incomplete tail dropped.

    Example:
        >>> [b.tolist() for b in itertools.islice(epoch_batches(5, 2, seed=0), 3)]
        [[0, 4], [2, 3], [3, 2]]
    """
    gen = torch.Generator().manual_seed(seed + 1)
    while True:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start : start + batch_size]


class EpochBatchSampler(Sampler[list[int]]):
    """:func:`epoch_batches` as a DataLoader's ``batch_sampler``: the same indices, as lists of ints.

    Args:
        n: examples in the training set.
        batch_size: examples per batch.
        seed: the trial's seed.
        num_batches: stop after this many batches (the steps of a run, so that the loader's
            workers do not prefetch batches no step will take); ``None``: endless.
    """

    def __init__(self, n: int, batch_size: int, seed: int, num_batches: int | None = None) -> None:
        self.n, self.batch_size, self.seed, self.num_batches = n, batch_size, seed, num_batches

    def __iter__(self) -> Iterator[list[int]]:
        for idx in itertools.islice(epoch_batches(self.n, self.batch_size, self.seed), self.num_batches):
            yield idx.tolist()

    def __len__(self) -> int:  # DataLoader asks; an endless stream says one epoch
        return self.num_batches if self.num_batches is not None else max(1, self.n // self.batch_size)
