"""bstune/data.py: a dataset bstune cannot use is a TaskError naming the Task's field, the same one a user sees."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset

import bstune
from bstune.data import as_dataset, batch_len
from bstune.errors import TaskError
from tests.conftest import make_classification, small_mlp

X, Y = make_classification(n=64)


class _Stream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    def __iter__(self) -> Any:
        return iter(zip(X, Y, strict=True))


BAD = [
    ((X, Y[:10]), "inputs and targets differ in length (64 vs 10)"),
    (
        [1, 2, 3],
        "expected a torch.utils.data.Dataset or a pair of tensors or numpy arrays (inputs, targets), got a list of (int, int, int)",
    ),
    (_Stream(), "an iterable dataset without __len__ cannot be sampled; give a map-style Dataset"),
    ((np.array(["a"] * 64, dtype=object), Y.numpy()), "a numpy array of dtype object cannot become a tensor"),
]


@pytest.mark.parametrize(("data", "reason"), BAD, ids=["lengths", "list", "iterable", "object-dtype"])
def test_a_bad_dataset_is_a_task_error_naming_the_field(data: Any, reason: str) -> None:
    with pytest.raises(TaskError) as info:
        as_dataset(data, field="val_data")
    assert info.value.field == "val_data" and str(info.value).startswith(f"Task: val_data: {reason}")


@pytest.mark.parametrize(("data", "reason"), BAD, ids=["lengths", "list", "iterable", "object-dtype"])
def test_the_task_says_the_same_as_before(data: Any, reason: str) -> None:
    with pytest.raises(TaskError) as info:
        bstune.Task(model=small_mlp, train_data=data, val_data=(X, Y), loss=torch.nn.CrossEntropyLoss())
    assert info.value.field == "train_data" and str(info.value).startswith(f"Task: train_data: {reason}")


def test_a_batch_without_tensors_is_a_task_error() -> None:
    assert batch_len({"x": X[:5]}) == 5
    with pytest.raises(TaskError, match=r"^Task: cannot find the batch dimension of str: a batch holds tensors"):
        batch_len("abc")
