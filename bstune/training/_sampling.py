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

With a ``batch_schedule`` the batch size changes between steps
(:func:`~bstune.training._schedule.step_batch_sizes`); the stream is cut the same way: a
batch of the new size continues the current epoch's permutation where the last batch
ended, and when what is left of the epoch cannot fill it, that tail is dropped and the
next epoch's permutation begins. The order still depends on the seed (and the schedule)
alone, and a run without a schedule draws exactly the batches it drew before.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

from bstune.data import fetch_batch, is_tensor_pair
from bstune.errors import ConfigError
from bstune.task import Task
from bstune.training._config import TrainConfig
from bstune.training._schedule import step_batch_sizes

__all__ = [
    "EpochBatchSampler",
    "SliceBatchSampler",
    "StreamBatchSampler",
    "epoch_batches",
    "rank_slices",
    "training_batches",
]


def epoch_batches(n: int, batch_size: int, seed: int, sizes: Iterable[int] | None = None) -> Iterator[torch.Tensor]:
    """Batches of indices into ``range(n)``: one permutation per epoch, the incomplete tail dropped.

    Endless batches of ``batch_size``; with ``sizes`` (a batch schedule's size of each step,
    each at most ``n``), one batch of each size in turn, each continuing the epoch's
    permutation while it holds enough examples.

    Example:
        >>> [b.tolist() for b in itertools.islice(epoch_batches(5, 2, seed=0), 3)]
        [[0, 4], [2, 3], [3, 2]]
        >>> [b.tolist() for b in epoch_batches(5, 2, seed=0, sizes=[2, 2, 1, 3])]
        [[0, 4], [2, 3], [1], [3, 2, 4]]
    """
    gen = torch.Generator().manual_seed(seed + 1)
    if sizes is None:
        while True:
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n - batch_size + 1, batch_size):
                yield perm[start : start + batch_size]
    pending = iter(sizes)
    size = next(pending, None)
    while size is not None:
        if not 0 < size <= n:
            raise ConfigError(
                f"a batch of {size} examples cannot be drawn from the {n} training examples",
                source="TrainConfig",
                field="batch_schedule",
            )
        perm, start = torch.randperm(n, generator=gen), 0
        while size is not None and start + size <= n:
            yield perm[start : start + size]
            start += size
            size = next(pending, None)


class EpochBatchSampler(Sampler[list[int]]):
    """:func:`epoch_batches` as a DataLoader's ``batch_sampler``: the same indices, as lists of ints.

    Args:
        n: examples in the training set.
        batch_size: examples per batch.
        seed: the trial's seed.
        num_batches: stop after this many batches (the steps of a run, so that the loader's
            workers do not prefetch batches no step will take); ``None``: endless.
        sizes: a batch schedule's batch size of each step (:func:`epoch_batches`); after
            them the last size repeats.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, num_batches: int | None = None, sizes: list[int] | None = None
    ) -> None:
        self.n, self.batch_size, self.seed, self.num_batches = n, batch_size, seed, num_batches
        self.sizes = sizes

    def __iter__(self) -> Iterator[list[int]]:
        sizes = None
        if self.sizes:
            sizes = itertools.chain(self.sizes, itertools.repeat(self.sizes[-1]))
        for idx in itertools.islice(epoch_batches(self.n, self.batch_size, self.seed, sizes), self.num_batches):
            yield idx.tolist()

    def __len__(self) -> int:  # DataLoader asks; an endless stream says one epoch
        return self.num_batches if self.num_batches is not None else max(1, self.n // self.batch_size)


def rank_slices(batch_size: int, world_size: int) -> list[tuple[int, int]]:
    """Each rank's contiguous ``[start, stop)`` of a global batch: sizes B//N, the first B%N one more.

    Example:
        >>> rank_slices(9, 2), rank_slices(8, 4)
        ([(0, 5), (5, 9)], [(0, 2), (2, 4), (4, 6), (6, 8)])
    """
    base, extra = divmod(batch_size, world_size)
    bounds, start = [], 0
    for r in range(world_size):
        stop = start + base + (1 if r < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


class SliceBatchSampler(Sampler[list[int]]):
    """An :class:`EpochBatchSampler` cut to one rank's ``[start, stop)`` of every global batch."""

    def __init__(self, inner: EpochBatchSampler, start: int, stop: int) -> None:
        self.inner, self.start, self.stop = inner, start, stop

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.inner:
            yield idx[self.start : self.stop]

    def __len__(self) -> int:
        return len(self.inner)


def _pinned(obj: Any) -> Any:
    """A collated batch with its tensors in page-locked memory (for an asynchronous copy to CUDA)."""
    if isinstance(obj, torch.Tensor):
        return obj.pin_memory()
    if isinstance(obj, dict):
        return {k: _pinned(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_pinned(v) for v in obj)
    return obj


def training_batches(
    task: Task, config: TrainConfig, device: torch.device, part: tuple[int, int] | None = None
) -> Iterator[Any]:
    """The run's training batches on the host, in :func:`epoch_batches` order.

    With ``num_workers > 0`` and a generic dataset, a :class:`~torch.utils.data.DataLoader`
    whose batch sampler yields exactly those indices loads them in worker processes
    (prefetching, pinned for CUDA); its worker seeds come from a generator of its own, so
    the global RNG (dropout, ...) draws the same numbers with or without workers (a random
    augmentation in ``__getitem__`` draws from its worker's seeded RNG instead). A pair of
    tensors keeps the in-process fast path (one indexing operation per batch, which no
    worker beats), as does ``num_workers=0``. With ``part=(start, stop)`` (a data-parallel
    rank's slice) only those positions of every batch are loaded. With a ``batch_schedule``
    each step's batch has its stage's size (cut from the stream as the module docstring says).
    """
    dataset = task.train_dataset
    pin = config.pin_memory
    sizes = list(step_batch_sizes(config)) if config.batch_schedule is not None else None
    if config.num_workers > 0 and not is_tensor_pair(dataset):
        sampler = EpochBatchSampler(task.n_train, config.batch_size, config.seed, num_batches=config.steps, sizes=sizes)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler if part is None else SliceBatchSampler(sampler, *part),
            num_workers=config.num_workers,
            pin_memory=(pin is not False) and device.type == "cuda",
            prefetch_factor=config.prefetch_factor,
            generator=torch.Generator().manual_seed(config.seed + 2),
        )
        return iter(loader)
    cut = slice(None) if part is None else slice(*part)  # data parallel: this rank's slice of each batch
    order = epoch_batches(task.n_train, config.batch_size, config.seed, sizes)
    batches = (fetch_batch(dataset, idx[cut]) for idx in order)
    if pin is True and device.type == "cuda":
        batches = (_pinned(batch) for batch in batches)
    return batches


class StreamBatchSampler(Sampler[list[int]]):
    """Endless batches of indices for ``ctx.loader``: the trainer's order (``epoch``: :class:`EpochBatchSampler`,
    one seeded permutation per epoch, the tail that does not fill a batch dropped) or the LR range test's
    (``draw``: every batch a fresh random subset, from a generator seeded ``seed + 7``).

    Example:
        >>> batches = iter(StreamBatchSampler(10, 4, seed=0, order="epoch"))
        >>> [len(next(batches)) for _ in range(3)]  # epoch after epoch: 2 full batches each
        [4, 4, 4]
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, order: str, sizes: list[int] | None = None, skip: int = 0
    ) -> None:
        self.n, self.batch_size, self.seed, self.order = n, batch_size, seed, order
        self.sizes = sizes  # a batch schedule's size of each step (the epoch order only)
        self.skip = skip  # batches already handed out: the stream goes on from there

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(self._batches(), self.skip, None)

    def _batches(self) -> Iterator[list[int]]:
        if self.order == "draw":
            gen = torch.Generator().manual_seed(self.seed + 7)
            while True:
                yield torch.randperm(self.n, generator=gen)[: self.batch_size].tolist()
        yield from EpochBatchSampler(self.n, self.batch_size, self.seed, sizes=self.sizes)

    def __len__(self) -> int:  # DataLoader asks; the stream is as long as the budget
        return max(1, self.n // self.batch_size)
