"""The bstune error hierarchy.

Every error bstune raises on purpose derives from :class:`BstuneError`, so a caller
can catch the whole family in one clause. Errors about user input also derive from
:class:`ValueError` and carry *where* the problem is (``source``: a file or argument
name, ``field``: the key inside it) so that the message can point at it.
"""

from __future__ import annotations

__all__ = [
    "BatchLargerThanDataError",
    "BstuneError",
    "ConfigError",
    "DependencyError",
    "EstimationError",
    "MissingSettingError",
    "StorageError",
    "TaskError",
    "UserCodeError",
]


class BstuneError(Exception):
    """Base class of every error raised by bstune."""


class ConfigError(BstuneError, ValueError):
    """A setting is invalid. The message names the source, the field and the reason.

    Example:
        >>> err = ConfigError("must be positive, got -3", source="TrainConfig", field="batch_size")
        >>> str(err)
        'TrainConfig: batch_size: must be positive, got -3'
    """

    def __init__(self, reason: str, *, source: str | None = None, field: str | None = None) -> None:
        self.reason = reason
        self.source = source
        self.field = field
        where = ": ".join(part for part in (source, field) if part)
        super().__init__(f"{where}: {reason}" if where else reason)


class TaskError(ConfigError):
    """A :class:`bstune.Task` is unusable (bad dataset, loss, model factory...)."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason, source="Task", field=field)


class BatchLargerThanDataError(ConfigError):
    """A training run was asked for batches larger than its training set.

    ``n_examples`` is the training set's size, so a study can cap its later trials there.

    Example:
        >>> err = BatchLargerThanDataError(512, 300, source="ctx.loader")
        >>> err.n_examples, str(err)
        (300, 'ctx.loader: batch_size: 512 is larger than the training set (300 examples)')
    """

    def __init__(
        self, batch_size: int, n_examples: int, *, source: str | None = None, field: str = "batch_size"
    ) -> None:
        super().__init__(
            f"{batch_size} is larger than the training set ({n_examples} examples)",
            source=source,
            field=field,
        )
        self.batch_size = batch_size
        self.n_examples = n_examples


class MissingSettingError(ConfigError, KeyError):
    """A setting a run was not given was read (``ctx.config["momentum"]`` without an optimizer).

    A :class:`KeyError` too, so ``dict`` idioms keep working; its message says why the key is absent.

    Example:
        >>> err = MissingSettingError("the run was given no optimizer", source="ctx.config", field="momentum")
        >>> isinstance(err, KeyError), str(err)
        (True, 'ctx.config: momentum: the run was given no optimizer')
    """

    def __str__(self) -> str:  # KeyError's own would quote the message as a key
        return str(self.args[0]) if self.args else ""


class EstimationError(BstuneError):
    """A statistical estimate cannot be formed from the data given (too few batches...)."""


class DependencyError(BstuneError, ImportError):
    """An optional dependency is missing; the message says which extra to install."""


class StorageError(BstuneError):
    """The study's storage failed mid-study: a full disk, a file made read-only or removed, a
    database gone or locked for too long. What it recorded before the failure is kept, so the
    study resumes once the storage is fixed. ``source`` names the storage, ``reason`` is its own
    error in one line, ``advice`` what to do.

    Example:
        >>> str(StorageError("database or disk is full", source="sqlite:///runs/study.db", advice="make room"))
        'sqlite:///runs/study.db: the study could not be recorded: database or disk is full; make room'
    """

    def __init__(self, reason: str, *, source: str, advice: str) -> None:
        self.reason = reason
        self.source = source
        self.advice = advice
        super().__init__(f"{source}: the study could not be recorded: {reason}; {advice}")


class UserCodeError(BstuneError):
    """The task's code (model, loss, data) raised while bstune ran it.

    The message is one line (what was running, the exception); ``traceback`` keeps the
    whole traceback, which the command line shows with ``-v``.
    """

    def __init__(self, message: str, *, traceback: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback
