"""Turning the user's datasets into batches of ``(inputs, targets)``.

bstune draws batches itself (rather than through a ``DataLoader`` iterator) because
it must know exactly which examples each step used: the sample counter, the
finite-population correction of the noise-scale estimators and reproducibility all
depend on it. A dataset is any map-style :class:`torch.utils.data.Dataset` whose
items are ``(input, target)`` pairs, or a pair of tensors (or numpy arrays). Tensor
datasets take a fast path (one indexing operation per batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeGuard

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset, default_collate

from bstune.errors import TaskError

__all__ = ["Batch", "as_dataset", "batch_len", "fetch_batch", "move_to_device", "sample_indices", "slice_batch"]
__all__ += ["is_tensor_pair"]

Batch = tuple[Any, Any]
"""One batch: ``(inputs, targets)``; each a tensor or a nested structure of tensors."""


def as_dataset(data: Any, *, field: str | None = None) -> Dataset[Any]:
    """Accept a ``Dataset`` or an ``(inputs, targets)`` pair of tensors or numpy arrays.

    numpy arrays are converted with :func:`torch.from_numpy` (no copy where the dtype
    stays): floating arrays become ``float32`` (numpy's default ``float64`` would not
    run through a model built with torch's default dtype), integer arrays ``int64``
    (what ``CrossEntropyLoss`` takes as class labels); other dtypes are kept.

    Raises:
        TaskError: ``data`` is neither, or cannot be sampled; it names ``field`` (the
            Task's ``train_data`` or ``val_data``) and the reason.

    Example:
        >>> as_dataset([1, 2, 3], field="val_data")
        Traceback (most recent call last):
        ...
        bstune.errors.TaskError: Task: val_data: expected a torch.utils.data.Dataset or a pair of tensors or numpy arrays (inputs, targets), got a list of (int, int, int)
    """
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, _ARRAY) for t in data):
        inputs, targets = (_as_tensor(t, field) for t in data)
        if inputs.shape[0] != targets.shape[0]:
            raise TaskError(
                f"inputs and targets differ in length ({inputs.shape[0]} vs {targets.shape[0]})", field=field
            )
        return TensorDataset(inputs, targets)
    if isinstance(data, Dataset):
        if not hasattr(data, "__len__"):
            raise TaskError(
                "an iterable dataset without __len__ cannot be sampled; give a map-style Dataset", field=field
            )
        return data
    raise TaskError(
        "expected a torch.utils.data.Dataset or a pair of tensors or numpy arrays (inputs, targets), "
        f"got {_describe(data)}",
        field=field,
    )


_ARRAY = (torch.Tensor, np.ndarray)


def _as_tensor(array: torch.Tensor | np.ndarray[Any, Any], field: str | None) -> torch.Tensor:
    """A tensor as it is; a numpy array as a tensor (float -> float32, integer -> int64)."""
    if isinstance(array, torch.Tensor):
        return array
    if array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
    elif array.dtype.kind in "iu":
        array = array.astype(np.int64, copy=False)
    elif array.dtype.kind not in "bc":
        raise TaskError(f"a numpy array of dtype {array.dtype} cannot become a tensor; give numbers", field=field)
    return torch.from_numpy(np.ascontiguousarray(array))


def _describe(data: Any) -> str:
    """``a tuple of (ndarray, list)``: the type of ``data`` and, for a sequence, of its items."""
    name = type(data).__name__
    if isinstance(data, tuple | list) and 0 < len(data) <= 4:
        return f"a {name} of ({', '.join(type(item).__name__ for item in data)})"
    if isinstance(data, tuple | list):
        return f"a {name} of {len(data)} items"
    return name


def sample_indices(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Draw ``size`` distinct indices uniformly from ``range(n)`` (without replacement)."""
    return torch.randperm(n, generator=generator)[:size]


def fetch_batch(dataset: Dataset[Any], indices: torch.Tensor | Sequence[int]) -> Batch:
    """Collate the examples at ``indices`` into one ``(inputs, targets)`` batch."""
    if is_tensor_pair(dataset):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return dataset.tensors[0][idx], dataset.tensors[1][idx]
    items = [dataset[int(i)] for i in indices]
    inputs, targets = default_collate(items)
    return inputs, targets


def is_tensor_pair(dataset: Dataset[Any]) -> TypeGuard[TensorDataset]:
    """Whether :func:`fetch_batch` takes the fast path on ``dataset``: a ``TensorDataset`` of
    ``(inputs, targets)``, whose batch is one indexing operation per tensor."""
    return isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2


def move_to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move a tensor or a nested list/tuple/dict of tensors to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: move_to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(move_to_device(v, device, non_blocking) for v in obj)
    return obj


def batch_len(inputs: Any) -> int:
    """Number of examples in a collated batch (the leading dimension of its first tensor)."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    if isinstance(inputs, dict):
        return batch_len(next(iter(inputs.values())))
    if isinstance(inputs, list | tuple):
        return batch_len(inputs[0])
    raise TaskError(
        f"cannot find the batch dimension of {type(inputs).__name__}: "
        "a batch holds tensors, or lists, tuples or dicts of them"
    )


def slice_batch(obj: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a collated batch (tensors or nested structures)."""
    if isinstance(obj, torch.Tensor):
        return obj[start:stop]
    if isinstance(obj, dict):
        return {k: slice_batch(v, start, stop) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(slice_batch(v, start, stop) for v in obj)
    return obj
