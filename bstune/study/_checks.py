"""Checks a study makes when it is built, before the probe or any trial spends compute.

Two mistakes used to surface only after the whole probe: a budget too small for the
milestones (trials of two steps, all recommending alike), and a space whose
``model.<name>`` parameter the model factory does not take (every trial then fails).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bstune.errors import ConfigError
from bstune.space import MODEL_PREFIX, SearchSpace

__all__ = ["check_budget", "check_factory", "min_budget"]


def min_budget(n_evals: int, batch_size: int) -> int:
    """The smallest budget that gives a full trial at ``batch_size`` one step per milestone.

    A full trial at batch size B takes ``ceil(budget / B)`` steps; its milestones are at
    multiples of ``e = ceil(budget / n_evals)`` samples. Below ``(n_evals - 1) * B + 1``
    it takes fewer steps than there are milestones, and a pruner compares trials that
    took one or two steps. From there up, each milestone falls on a step of its own:
    while e < B, e/B > (n_evals - 1)/n_evals puts m·e/B in (m - 1, m), so the m-th
    milestone (m < n_evals) is reached at step m and the last at step n_evals; once
    e >= B, every e samples hold a step boundary.

    Example:
        >>> min_budget(9, 64)
        513
    """
    return (n_evals - 1) * batch_size + 1


def check_budget(budget_samples: int, n_evals: int, batch_cap: int, *, data_known: bool = True) -> None:
    """Refuse a budget whose trials at the space's largest batch size take fewer steps than milestones.

    ``data_known``: False for a training function, whose training set's size (which caps the batch
    size too) is not known before it runs: the message says so.

    Raises:
        ConfigError: naming the budget, the batch size and the smallest budget that serves.
    """
    need = min_budget(n_evals, batch_cap)
    if budget_samples < need:
        steps = -(-budget_samples // batch_cap)
        raise ConfigError(
            f"{budget_samples:,} samples give a trial at the largest batch size ({batch_cap}) {steps} optimizer "
            f"step(s) for its {n_evals} milestones; give at least {need:,} (a trial trains whole steps, so at batch "
            f"size {batch_cap} that is {n_evals} steps, the last starting at {need - 1:,}), lower the space's "
            "batch_size.max, or ask for fewer milestones (n_evals, --n-evals)"
            + (
                ""
                if data_known
                else "; a training function's training set is not known before it runs, so a batch_size.max "
                "above its size counts here: lower it to the training set's size"
            ),
            source="Study",
            field="budget_samples",
        )


def check_factory(factory: Callable[..., Any], space: SearchSpace) -> None:
    """Every ``model.<name>`` parameter of ``space`` must be a keyword the model factory takes.

    A factory taking ``**kwargs`` takes them all; one whose signature cannot be read
    (some builtins) is not checked.

    Raises:
        ConfigError: naming the space's file and parameter, the factory and the fix.
    """
    names = [p.name for p in space.params if p.name.startswith(MODEL_PREFIX)]
    if not names:
        return
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    kinds = {p.name: p.kind for p in signature.parameters.values()}
    if inspect.Parameter.VAR_KEYWORD in kinds.values():
        return
    takes = {
        n for n, k in kinds.items() if k in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    for name in names:
        keyword = name[len(MODEL_PREFIX) :]
        if keyword not in takes:
            raise ConfigError(
                f"the task's model factory {_describe(factory, signature)} takes no keyword `{keyword}`; "
                f"add a `{keyword}` keyword to the factory or remove the param from the space",
                source=space.source,
                field=f"params.{name}",
            )


def _describe(factory: Callable[..., Any], signature: inspect.Signature) -> str:
    """``make_task.<locals>.<lambda>() (good.py:9)``: the factory's name, signature and where it is defined."""
    name = f"{getattr(factory, '__qualname__', None) or type(factory).__name__}{signature}"
    code = getattr(factory, "__code__", None)
    if code is None:
        return name
    return f"{name} ({Path(code.co_filename).name}:{code.co_firstlineno})"
