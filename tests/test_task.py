"""Task validation: each mistake gets one error naming the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

import bstune
from bstune.errors import TaskError
from tests.conftest import make_classification, small_mlp

X, Y = make_classification(n=64)


def _task(**overrides: Any) -> bstune.Task:
    args: dict[str, Any] = dict(
        model=small_mlp, train_data=(X, Y), val_data=(X[:16], Y[:16]), loss=torch.nn.CrossEntropyLoss()
    )
    return bstune.Task(**(args | overrides))


class _Pairs(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return X[i], Y[i]


def test_accepts_tensors_and_datasets() -> None:
    task = _task(train_data=_Pairs(), optimizer=bstune.OptimizerSpec("adamw", weight_decay=0.01))
    assert task.n_train == 32 and task.n_val == 16
    assert task.optimizer_spec.family == "adamw"
    run = bstune.train(task, bstune.TrainConfig(batch_size=8, lr=1e-2, max_samples=64))
    assert run.status is bstune.RunStatus.COMPLETED


def test_make_model_is_seeded_and_leaves_the_global_rng_alone() -> None:
    task = _task()
    state = torch.random.get_rng_state()
    a, b = task.make_model(seed=1), task.make_model(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


shared_layer = torch.nn.Linear(8, 3)
the_module = small_mlp()


def _bad_loss_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(out, y, reduction="sum")


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"model": small_mlp()}, "model", "factory"),
        ({"model": lambda: the_module}, "model", "same module twice"),
        ({"model": lambda: torch.nn.Sequential(shared_layer)}, "model", "share"),
        ({"model": lambda: "not a module"}, "model", "not an nn.Module"),
        ({"model": lambda: 1 / 0}, "model", "ZeroDivisionError"),
        # a newcomer's make_model(hidden) with model.hidden in the space: the check calls it with no arguments
        (
            {"model": lambda hidden: torch.nn.Linear(4, hidden)},
            "model",
            "every argument of the factory needs a default",
        ),
        ({"model": lambda: torch.nn.Linear(5, 3)}, "model", "failed on a batch"),
        ({"train_data": (X[:0], Y[:0])}, "train_data", "empty"),
        ({"train_data": (X, Y[:10])}, "train_data", "differ in length"),
        ({"val_data": [1, 2, 3]}, "val_data", "Dataset or a pair of tensors"),
        ({"loss": torch.nn.CrossEntropyLoss(reduction="sum")}, "loss", "reduction is 'sum'"),
        ({"loss": _bad_loss_sum}, "loss", "sums over the batch"),
        ({"loss": torch.nn.CrossEntropyLoss(reduction="none")}, "loss", "reduction"),
        ({"loss": lambda out, y: torch.nn.functional.cross_entropy(out, y, reduction="none")}, "loss", "scalar"),
        ({"loss": lambda out, y: out.sum() * float("nan")}, "loss", "not finite"),
        ({"loss": "mse"}, "loss", "callable"),
        ({"metrics": {"loss": lambda o, y: 0.0}}, "metrics", "other than 'loss'"),
        ({"metrics": {"acc": lambda o, y: 1 / 0}}, "metrics", "failed"),
        ({"optimizer": "lbfgs"}, "family", "unknown optimizer"),
    ],
)
def test_bad_tasks_raise_one_clear_error(overrides: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(TaskError if field != "family" else bstune.ConfigError) as info:
        _task(**overrides)
    assert info.value.field == field
    assert words in str(info.value)
    if field != "family":
        assert str(info.value).startswith(f"Task: {field}: ")


def test_validation_can_be_skipped_for_big_models() -> None:
    calls: list[int] = []

    def factory() -> torch.nn.Module:
        calls.append(1)
        return small_mlp()

    _task(model=factory, validate=False)
    assert calls == []


def test_wrong_shapes_name_the_inputs() -> None:
    make: Callable[[], torch.nn.Module] = lambda: torch.nn.Linear(7, 3)  # noqa: E731
    with pytest.raises(TaskError, match=r"inputs tensor of shape \(2, 8\)"):
        _task(model=make)


def test_numpy_arrays_are_accepted_as_float32_features_and_int64_labels() -> None:
    x, y = X.double().numpy(), Y.numpy().astype("int32")  # numpy's float64, and 32-bit labels
    task = _task(train_data=(x, y), val_data=(x[:16], y[:16]))
    features, labels = task.train_dataset.tensors  # type: ignore[attr-defined]
    assert (features.dtype, labels.dtype) == (torch.float32, torch.int64)
    run = bstune.train(task, bstune.TrainConfig(batch_size=8, lr=1e-2, max_samples=64))
    assert run.status is bstune.RunStatus.COMPLETED


def test_an_unsupported_pair_names_the_types_it_was_given() -> None:
    with pytest.raises(TaskError, match=r"got a tuple of \(ndarray, list\)") as info:
        _task(train_data=(X.numpy(), Y.tolist()))
    assert "numpy arrays" in str(info.value)


def test_outputs_broadcast_against_targets_are_named_as_the_cause() -> None:
    x, y = torch.randn(64, 8), torch.randn(64)  # (N,) targets against the model's (N, 1) outputs
    with pytest.raises(TaskError) as info:
        _task(model=lambda: torch.nn.Linear(8, 1), train_data=(x, y), val_data=(x, y), loss=torch.nn.MSELoss())
    message = str(info.value)
    assert info.value.field == "loss"
    assert "outputs of shape (2, 1) and targets of shape (2,) broadcast to (2, 2)" in message
    assert "squeeze the model's output" in message and "not the mean" not in message


def test_a_label_past_the_model_classes_is_found_in_the_whole_dataset() -> None:
    labels = Y.clone()
    labels[50] = 7  # the two-example check sees examples 0 and 1 only
    with pytest.raises(TaskError) as info:
        _task(train_data=(X, labels))
    assert info.value.field == "train_data"
    assert "example 50 has label 7, outside the model's 3 classes" in str(info.value)
    labels[50] = -100  # CrossEntropyLoss's ignore_index is a label the loss skips
    _task(train_data=(X, labels))
    ones = (X[:, :1] > 0).long()  # a single output is no class dimension: not checked as labels
    _task(model=lambda: torch.nn.Linear(8, 1), train_data=(X, ones), val_data=(X, ones), loss=_single_logit_loss)


def _single_logit_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(out, y.float())
