"""The Task: what to train, on what data, with which loss and optimizer family.

A :class:`Task` is the contract between the user's training problem and bstune. It
is checked when it is built, so that a mistake (an empty dataset, a loss that sums
instead of averaging, a factory that hands back the same module twice) surfaces as
one clear :class:`~bstune.errors.TaskError` naming the field, before any trial runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from bstune.data import as_dataset, batch_len, fetch_batch, slice_batch
from bstune.errors import TaskError
from bstune.metrics import Direction, Metric, MetricFn, infer_direction
from bstune.optim import OptimizerSpec

__all__ = ["LossFn", "MetricFn", "Task", "has_batchnorm"]

logger = logging.getLogger(__name__)

LossFn = Callable[[Any, Any], torch.Tensor]
"""``loss(outputs, targets) -> scalar tensor``, averaged over the batch."""

_BATCHNORM = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)


@dataclass
class Task:
    """A training problem bstune can measure and tune.

    Args:
        model: a factory ``() -> nn.Module`` returning a *fresh* model each call.
        train_data: training set: a map-style ``Dataset`` of ``(input, target)``
            pairs, or a pair ``(inputs, targets)`` of tensors or numpy arrays
            (float arrays become float32, integer arrays int64).
        val_data: validation set, same forms.
        loss: ``loss(outputs, targets)`` returning a scalar *averaged* over the batch
            (``reduction="mean"``); the noise scale is wrong by a factor B otherwise.
        metrics: extra metrics, by name, evaluated on both sets (recorded as ``train_<name>`` and
            ``val_<name>``), each over the whole set (R², F1, AUC are exact), or as a mean of
            evaluation batches where declared ``over="batch"``. Each is a :class:`~bstune.Metric` that says
            whether it is maximized or minimized, ``Metric(accuracy, direction="maximize")``,
            or a plain callable whose name says it (``accuracy``, ``acc``, ``f1``, ``auc``,
            ``precision``, ``recall``, ``top1``, ``top5``: maximized; a name containing ``loss``,
            ``error``, ``mse``, ``mae``, ``rmse``, ``nll`` or ``perplexity``: minimized); any
            other name must be declared. The loss is always minimized.
        optimizer: optimizer family and its fixed settings, or a family name.
        name: used in logs and reports.
        validate: run a smoke test (build the model twice, forward two examples,
            check the loss) on construction. Turn off only for models too big to
            build twice on the CPU.

    Example:
        >>> import torch
        >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        >>> task = Task(model=lambda: torch.nn.Linear(4, 3), train_data=(x, y),
        ...             val_data=(x[:16], y[:16]), loss=torch.nn.CrossEntropyLoss())
        >>> task.n_train, task.optimizer.family
        (64, 'sgd')
    """

    model: Callable[[], nn.Module]
    train_data: Any
    val_data: Any
    loss: LossFn
    metrics: Mapping[str, Metric | MetricFn] = field(default_factory=dict)
    optimizer: OptimizerSpec | str = "sgd"
    name: str = "task"
    validate: bool = True

    def __post_init__(self) -> None:
        if not callable(self.model) or isinstance(self.model, nn.Module):
            raise TaskError(
                "must be a factory (a callable taking no arguments) that returns a new nn.Module, "
                f"got {type(self.model).__name__}; wrap a module class as `lambda: MyNet()`",
                field="model",
            )
        for name in ("train_data", "val_data"):
            ds = as_dataset(getattr(self, name), field=name)
            if len(ds) == 0:  # type: ignore[arg-type]
                raise TaskError("is empty", field=name)
            setattr(self, name, ds)
        if not callable(self.loss):
            raise TaskError(f"must be callable as loss(outputs, targets), got {type(self.loss).__name__}", field="loss")
        reduction = getattr(self.loss, "reduction", "mean")
        if reduction != "mean":
            raise TaskError(
                f"reduction is {reduction!r}; bstune needs the batch mean (reduction='mean') "
                "so that gradients do not scale with batch size",
                field="loss",
            )
        if not isinstance(self.metrics, Mapping):
            raise TaskError(
                f"must be a mapping of name -> callable, got {type(self.metrics).__name__}", field="metrics"
            )
        for key in self.metrics:
            if not isinstance(key, str) or not key.isidentifier() or key == "loss":
                raise TaskError(f"metric name {key!r} must be an identifier other than 'loss'", field="metrics")
        self.metrics = {key: _declared(key, fn) for key, fn in self.metrics.items()}
        self.optimizer = OptimizerSpec.coerce(self.optimizer)
        if self.validate:
            self._smoke_test()

    # -- public helpers ---------------------------------------------------------------
    @property
    def train_dataset(self) -> Dataset[Any]:
        return self.train_data  # type: ignore[no-any-return]

    @property
    def val_dataset(self) -> Dataset[Any]:
        return self.val_data  # type: ignore[no-any-return]

    @property
    def directions(self) -> dict[str, Direction]:
        """Whether each recorded quantity is minimized or maximized: the losses and ``train_``/``val_`` metrics.

        Example:
            >>> import torch
            >>> x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
            >>> acc = lambda out, y: (out.argmax(-1) == y).float().mean()
            >>> task = Task(model=lambda: torch.nn.Linear(2, 2), train_data=(x, y), val_data=(x, y),
            ...             loss=torch.nn.CrossEntropyLoss(), metrics={"acc": acc})
            >>> {k: v.value for k, v in task.directions.items()}
            {'train_loss': 'minimize', 'val_loss': 'minimize', 'train_acc': 'maximize', 'val_acc': 'maximize'}
        """
        out = {"train_loss": Direction.MINIMIZE, "val_loss": Direction.MINIMIZE}
        for key, metric in self.metrics.items():
            assert isinstance(metric, Metric)  # normalised in __post_init__
            out[f"train_{key}"] = out[f"val_{key}"] = metric.direction
        return out

    @property
    def n_train(self) -> int:
        return len(self.train_data)

    @property
    def n_val(self) -> int:
        return len(self.val_data)

    @property
    def optimizer_spec(self) -> OptimizerSpec:
        assert isinstance(self.optimizer, OptimizerSpec)  # normalised in __post_init__
        return self.optimizer

    def make_model(self, seed: int | None = None, **kwargs: Any) -> nn.Module:
        """Build a fresh model; with ``seed``, its initialisation is reproducible.

        ``kwargs`` go to the factory (a search space's ``model.<name>`` parameters).
        The global RNG state is left as it was.
        """
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            try:
                model = self.model(**kwargs)
            except Exception as exc:
                hint = (
                    "; every argument of the factory needs a default: it is called with none where nothing is "
                    "searched (the Task's check, bstune train, the probe), and with the space's model.<name> "
                    "parameters by name in trials"
                    if isinstance(exc, TypeError) and "required" in str(exc) and not kwargs
                    else ""
                )
                raise TaskError(f"the model factory raised {type(exc).__name__}: {exc}{hint}", field="model") from exc
        if not isinstance(model, nn.Module):
            raise TaskError(f"the factory returned {type(model).__name__}, not an nn.Module", field="model")
        return model

    # -- validation -------------------------------------------------------------------
    def _smoke_test(self) -> None:
        first, second = self.make_model(seed=0), self.make_model(seed=0)
        if first is second:
            raise TaskError(
                "the factory returned the same module twice; it must build a new one per call", field="model"
            )
        shared = {p.data_ptr() for p in first.parameters()} & {p.data_ptr() for p in second.parameters()}
        if shared:
            raise TaskError(
                f"two models from the factory share {len(shared)} parameter tensor(s); build new layers on every call",
                field="model",
            )
        if not any(p.requires_grad for p in first.parameters()):
            raise TaskError("the model has no trainable parameters", field="model")
        del second
        for name in ("train_data", "val_data"):
            self._check_forward(first, getattr(self, name), name)

    def _check_forward(self, model: nn.Module, dataset: Dataset[Any], name: str) -> None:
        n = min(2, len(dataset))  # type: ignore[arg-type]
        try:
            inputs, targets = fetch_batch(dataset, list(range(n)))
        except Exception as exc:
            raise TaskError(
                f"could not collate examples into (inputs, targets): {type(exc).__name__}: {exc}", field=name
            ) from exc
        model.eval()  # BatchNorm/Dropout: a deterministic forward for the checks below
        try:
            with torch.no_grad():
                outputs = model(inputs)
        except Exception as exc:
            raise TaskError(
                f"the model failed on a batch of {n} examples from {name} "
                f"(inputs {_describe(inputs)}): {type(exc).__name__}: {exc}",
                field="model",
            ) from exc
        broadcast = _broadcast_shape(outputs, targets)
        try:
            with torch.no_grad(), _quiet_if(broadcast is not None):  # torch's warning: the error below says more
                value = self.loss(outputs, targets)
        except Exception as exc:
            raise TaskError(
                f"loss(outputs, targets) failed on {name} (outputs {_describe(outputs)}, targets {_describe(targets)}): "
                f"{type(exc).__name__}: {exc}",
                field="loss",
            ) from exc
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise TaskError(
                f"must return a scalar tensor averaged over the batch, got {_describe(value)}", field="loss"
            )
        if not math.isfinite(float(value)):
            raise TaskError(f"is not finite ({float(value)}) on the first examples of {name}", field="loss")
        if n == 2 and isinstance(outputs, torch.Tensor) and batch_len(outputs) == 2:
            with torch.no_grad(), _quiet_if(broadcast is not None):
                singles = [
                    float(self.loss(slice_batch(outputs, i, i + 1), slice_batch(targets, i, i + 1))) for i in (0, 1)
                ]
            mean, total = sum(singles) / 2, sum(singles)
            if abs(float(value) - mean) > 1e-4 * max(1.0, abs(mean)):
                if broadcast is not None:
                    raise TaskError(
                        f"outputs of shape {tuple(outputs.shape)} and targets of shape {tuple(targets.shape)} "
                        f"broadcast to {broadcast} in the loss, which then averages over every (output, target) "
                        "pair instead of per example; squeeze the model's output (e.g. `out.squeeze(-1)`) or "
                        "reshape the targets to the outputs' shape",
                        field="loss",
                    )
                hint = (
                    "it sums over the batch"
                    if abs(float(value) - total) <= 1e-4 * max(1.0, abs(total))
                    else ("it is not the mean of per-example losses")
                )
                raise TaskError(
                    f"{hint} (batch of 2: {float(value):.6g}, per-example losses {singles[0]:.6g}, {singles[1]:.6g}); "
                    "bstune needs the batch mean",
                    field="loss",
                )
        self._check_labels(outputs, dataset, name)
        for key, fn in self.metrics.items():
            try:
                with torch.no_grad():
                    float(fn(outputs, targets))
            except Exception as exc:
                raise TaskError(
                    f"metric {key!r} failed on {name}: {type(exc).__name__}: {exc}", field="metrics"
                ) from exc

    def _check_labels(self, outputs: Any, dataset: Dataset[Any], name: str) -> None:
        """Class labels of a tensor dataset must index the model's outputs (all of them, not two).

        Applies when the targets are integers and the outputs have one more dimension,
        the class dimension (``(N, C)`` against ``(N,)``, ``(N, C, H, W)`` against
        ``(N, H, W)``) with ``C > 1``. The loss's ``ignore_index`` (-100 by default) is allowed.
        """
        if not (isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2 and isinstance(outputs, torch.Tensor)):
            return
        labels = dataset.tensors[1]
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool or labels.numel() == 0:
            return
        if outputs.dim() != labels.dim() + 1 or outputs.shape[2:] != labels.shape[1:] or outputs.shape[1] < 2:
            return
        classes = int(outputs.shape[1])
        ignore = getattr(self.loss, "ignore_index", -100)
        rows = labels.reshape(len(labels), -1)  # (N, H*W) per-example labels
        outside = ((rows < 0) | (rows >= classes)) & (rows != ignore)
        if bool(outside.any()):
            index = int(torch.nonzero(outside.any(dim=1))[0, 0])
            value = int(rows[index][outside[index]][0])
            raise TaskError(
                f"example {index} has label {value}, outside the model's {classes} classes (outputs of shape "
                f"{tuple(outputs.shape)}: labels must be in 0..{classes - 1}); "
                f"{int(outside.sum())} label(s) in all are out of range",
                field=name,
            )


def _broadcast_shape(outputs: Any, targets: Any) -> tuple[int, ...] | None:
    """The shape two differently shaped tensors broadcast to, when it is larger than the outputs'
    (an elementwise loss then compares every output with every target); else ``None``."""
    if not (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)) or outputs.shape == targets.shape:
        return None
    try:
        shape = tuple(torch.broadcast_shapes(outputs.shape, targets.shape))
    except RuntimeError:
        return None
    return shape if shape != tuple(outputs.shape) else None


@contextlib.contextmanager
def _quiet_if(quiet: bool) -> Iterator[None]:
    """Silence ``UserWarning`` (torch's shape-mismatch warning) inside the block when ``quiet``."""
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", UserWarning)
        yield


def _declared(key: str, fn: Any) -> Metric:
    """``fn`` as a :class:`Metric`: declared, or a plain callable whose name says its direction."""
    if isinstance(fn, Metric):
        return fn
    if not callable(fn):
        raise TaskError(f"metric {key!r} is not callable", field="metrics")
    direction = infer_direction(key)
    if direction is None:
        raise TaskError(
            f"metric {key!r}: its name does not say whether higher or lower is better; declare it as "
            f"bstune.Metric(fn, direction='maximize') or bstune.Metric(fn, direction='minimize')",
            field="metrics",
        )
    return Metric(fn, direction)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm layer (which couples the examples of a batch in train mode)."""
    return any(isinstance(m, _BATCHNORM) for m in model.modules())


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"tensor of shape {tuple(obj.shape)}, dtype {obj.dtype}"
    return type(obj).__name__
