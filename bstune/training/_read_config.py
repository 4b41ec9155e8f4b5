"""``ctx.config``: the trial's settings as a dict that remembers which keys the training function read.

A training function reads its hyperparameters as it likes; the space's searched parameters
that a run never read nor had applied (``model.<name>`` ones, which only the loop can apply; the
optimizer's settings, which ``ctx.make_optimizer`` applies; the schedule's, which
``ctx.lr_scheduler`` applies; ``grad_clip``) are a misspelling (``model.hiden``) or one the loop
ignores, and the search spends its trials on them all the same: :func:`warn_unread` says so
once per process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from bstune.errors import MissingSettingError

__all__ = ["CHECKED_SETTINGS", "OPTIMIZER_SETTINGS", "SCHEDULE_SETTINGS", "ReadConfig", "warn_unread"]

logger = logging.getLogger(__name__)

_warned_unread: set[frozenset[str]] = set()  # the unread parameter sets this process has warned about


class ReadConfig(dict[str, Any]):
    """``ctx.config``: a plain dict that remembers which keys the training function read.

    A key counts as read through ``[]``, ``get``, ``in``, ``pop`` or ``setdefault``; iterating the
    whole mapping (``**ctx.config``, ``items()``) or copying it reads every key. The space's
    ``model.<name>`` parameters (which only the loop can apply) that a function never read are a
    misspelling (``model.hiden``) or one its loop ignores: either way the search spends its trials
    on them (:func:`warn_unread`).

    Example:
        >>> config = ReadConfig({"lr": 0.1, "model.width": 64, "model.hiden": 8})
        >>> config["model.width"], sorted(config.read)
        (64, ['model.width'])
        >>> type(__import__("copy").deepcopy(config)).__name__, sorted(config.read)  # a copy reads every key
        ('dict', ['lr', 'model.hiden', 'model.width'])
    """

    def __init__(self, *args: Any, missing: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()
        self.missing = dict(missing or {})  # why a key is absent, said by ``config[key]``

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        if key in self.missing and not dict.__contains__(self, key):
            raise MissingSettingError(self.missing[key], source="ctx.config", field=key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return super().__contains__(key)

    def pop(self, key: str, *default: Any) -> Any:
        self.read.add(key)
        return super().pop(key, *default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().setdefault(key, default)

    def __iter__(self) -> Iterator[str]:
        self.read.update(dict.keys(self))
        return super().__iter__()

    def keys(self) -> Any:
        self.read.update(dict.keys(self))
        return super().keys()

    def items(self) -> Any:
        self.read.update(dict.keys(self))
        return super().items()

    def values(self) -> Any:
        self.read.update(dict.keys(self))
        return super().values()

    def copy(self) -> dict[str, Any]:
        self.read.update(dict.keys(self))
        return dict(super().items())

    def __copy__(self) -> dict[str, Any]:
        return self.copy()

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        import copy

        self.read.update(dict.keys(self))
        return copy.deepcopy(dict(super().items()), memo)

    def __reduce__(self) -> Any:  # pickled (a copy kept by the function, Ray, its own ranks) as the plain dict it is
        # a copy sent to processes of the loop's own (its DDP ranks) is how it applies the batch size and rate there:
        # they count as read; a model.<name> misspelled stays unread (what a copy is read for cannot be seen)
        self.read.update(k for k in ("batch_size", "lr") if dict.__contains__(self, k))
        return (dict, (dict(super().items()),))


# searched TrainConfig settings a run must apply, and the helpers that apply them for it
SCHEDULE_SETTINGS = frozenset({"warmup_fraction", "warmup_samples", "schedule", "final_lr_ratio"})  # ctx.lr_scheduler
OPTIMIZER_SETTINGS = frozenset({"weight_decay", "momentum", "betas", "nesterov", "eps"})  # ctx.make_optimizer
CHECKED_SETTINGS = SCHEDULE_SETTINGS | OPTIMIZER_SETTINGS | {"grad_clip"}


def warn_unread(unread: list[str]) -> None:
    """Warn, once per process for each set of names, that a run never read these space parameters."""
    if not unread or frozenset(unread) in _warned_unread:
        return
    _warned_unread.add(frozenset(unread))
    helpers = []
    if "batch_size" in unread:
        helpers.append("ctx.loader (batches of the trial's batch size)")
    if "lr" in unread:
        helpers.append("ctx.make_optimizer or ctx.lr_scheduler (the trial's learning rate)")
    if any(k in OPTIMIZER_SETTINGS for k in unread):
        helpers.append("ctx.make_optimizer (the optimizer's settings)")
    if any(k in SCHEDULE_SETTINGS for k in unread):
        helpers.append("ctx.lr_scheduler (warmup and schedule)")
    own = {"batch_size", "lr"} >= set(unread)  # names bstune gives: not misspelled, fixed by the loop
    logger.warning(
        "the training function never read the space's searched parameter(s) %s from ctx.config (nor "
        "ctx.model_kwargs%s)%s: %s; the search spends its trials on them all the same, and the recommended config "
        "names values the loop never used",
        ", ".join(repr(k) for k in unread),
        ", ctx.batch_size, ctx.lr, ctx.train_config" if {"batch_size", "lr"} & set(unread) else "",
        f", nor used {' or '.join(helpers)}, which apply them" if helpers else "",
        "the loop trains at values of its own"
        if own
        else "a misspelled name, or one the loop ignores (a value it fixes itself)",
    )
