"""Where the streams of ``ctx.loader`` stand: the batches a user's loop took from each, so that a loader
opened again goes on from there, and a loop that takes batches without counting them with ``ctx.step``
is stopped instead of running for ever."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from bstune.errors import ConfigError

__all__ = ["Streams"]


class Counts(Protocol):
    """What a stream reads of a :class:`~bstune.training.TrialContext`: the samples and steps counted, the step's
    batch size, whether the run is done."""

    samples: int
    steps: int

    def _is_done(self) -> bool: ...

    def _batch_now(self) -> int: ...


@dataclass
class Stream:
    """How far one stream has gone: batches and samples handed to the loop."""

    n: int  # the dataset's size
    handed: int = 0
    taken: int = 0
    open: bool = False  # a loop is iterating it now


class Streams:
    """The streams of one run, by their dataset.

    Example:
        >>> streams, data = Streams(), list(range(10))
        >>> first = streams.of(data, 10)
        >>> first.handed = 3  # a loop took three batches, then broke out
        >>> streams.of(data, 10).handed  # opened again: it goes on from there
        3
    """

    def __init__(self) -> None:
        self._by_dataset: dict[int, Stream] = {}

    def of(self, dataset: Any, n: int) -> Stream:
        """Where ``dataset``'s stream stands: a loader opened again on it goes on from there, as does one on a
        dataset made again for it (a new object of the same size, where only one such stream is closed); two
        loaders open at once (zipped) each keep their own."""
        key = id(dataset)
        if key not in self._by_dataset:
            closed = [k for k, st in self._by_dataset.items() if not st.open and st.n == n]
            self._by_dataset[key] = self._by_dataset.pop(closed[0]) if len(closed) == 1 else Stream(n)
        return self._by_dataset[key]

    @staticmethod
    def batches(
        run: Counts, loader: torch.utils.data.DataLoader[Any], sizes: list[int] | None, stream: Stream, slack: int
    ) -> Iterator[Any]:
        """The loader's batches until the run's samples, as ``ctx.step`` counts them, are spent.

        The stream ends on ``ctx.step``'s count alone, so a loop that never calls it would run for ever: once
        it has taken ``slack`` samples more than it counted, it is stopped with an error that names
        ``ctx.step``. ``sizes``: a batch schedule's size of each step (else every batch is the step's size).
        """
        batches = iter(loader)
        stream.open = True
        try:
            while not run._is_done():
                if stream.taken - run.samples > slack:
                    raise ConfigError(
                        f"the loop took {stream.taken:,} samples from ctx.loader but counted {run.samples:,} with "
                        f"ctx.step ({run.steps} call(s)); call ctx.step(loss) once after each optimizer step, "
                        "without samples= for a batch of ctx.loader: the stream ends when the trial's samples, as "
                        "ctx.step counts them, are spent",
                        source="ctx.loader",
                    )
                batch = next(batches)
                k = stream.handed
                stream.taken += sizes[k] if sizes is not None and k < len(sizes) else run._batch_now()
                stream.handed += 1
                yield batch
        finally:  # left (a break, the budget spent): a loader opened again goes on from here
            stream.open = False
