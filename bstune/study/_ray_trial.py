"""The trial side of the Ray Tune backend: what runs in a Ray worker, and the record read back.

:func:`train_trial` is the function trainable the driver (:mod:`bstune.study._ray`)
hands to Tune: it trains one planned trial with the study's
:class:`~bstune.study._backend.TrialJob` and reports at the study's sample milestones. :func:`record_from_result` turns what a
trial last reported back into the :class:`~bstune.records.TrialRecord` that
both backends return.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from bstune._keys import OUTCOME_FILE, PLAN_KEY, TRIAL_NUMBER_KEY
from bstune.records import TrialRecord, TrialStatus, clean_json
from bstune.study._backend import TrialJob
from bstune.study._trial import history_row
from bstune.study._trial_plan import TrialPlan
from bstune.training import Decision, EvalRecord

__all__ = ["record_from_result", "relay_warnings", "train_trial", "with_warnings"]

WARNINGS_KEY = "warnings"  # what bstune warned of in the worker, said again on the driver


class _Kept(logging.Handler):
    def __init__(self, said: list[list[Any]]) -> None:
        super().__init__(logging.WARNING)
        self.said = said

    def emit(self, record: logging.LogRecord) -> None:
        entry = [record.name, record.levelno, record.getMessage()]
        if entry not in self.said:
            self.said.append(entry)


@contextlib.contextmanager
def kept_warnings(into: list[list[Any]] | None = None) -> Iterator[list[list[Any]]]:
    """bstune's warnings in a Ray worker, as ``[logger name, level, message]``, added to ``into`` as they come
    (the driver gets no worker's log: ``log_to_driver`` is off, to keep Ray's own lines out of the user's)."""
    handler = _Kept(into if into is not None else [])
    bstune_logger = logging.getLogger("bstune")
    bstune_logger.addHandler(handler)
    try:
        yield handler.said
    finally:
        bstune_logger.removeHandler(handler)


def with_warnings(fn: Callable[..., Any], **kwargs: Any) -> tuple[Any, list[list[Any]]]:
    """``fn(**kwargs)`` in a Ray task, and the warnings it gave (for :func:`relay_warnings`)."""
    with kept_warnings() as said:
        return fn(**kwargs), said


def relay_warnings(said: list[list[Any]], where: str, already: set[tuple[str, str]]) -> None:
    """Say on the driver, under the logger that said it, what a worker warned of; once each (``already``)."""
    for name, level, message in said:
        if (name, message) not in already:
            already.add((name, message))
            logging.getLogger(str(name)).log(int(level), "%s (%s)", message, where)


def _node() -> str:
    import ray

    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # pragma: no cover - outside a Ray worker
        return "unknown"


def train_trial(config: dict[str, Any], *, job: TrialJob) -> None:
    """Ray Tune function trainable: one trial of a bstune study.

    Reports at every milestone before the last (``samples`` is the milestone in
    training samples, ASHA's time axis; ``objective`` the best value so far), then once
    with the outcome and a checkpoint holding it. The outcome carries no ``samples``,
    so ASHA takes no decision on it: a trial that trained its whole budget is never
    stopped at the finish line.
    """
    from ray import tune

    plan = TrialPlan.from_dict(config[PLAN_KEY])
    node = _node()
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            done = Path(folder, OUTCOME_FILE)
            if done.is_file():  # finished before the driver went down: replay, do not train again
                tune.report(json.loads(done.read_text()))
                return
    history: list[dict[str, Any]] = []
    said: list[list[Any]] = []  # bstune's warnings so far: with every report, as ASHA may end the trial at any

    def on_milestone(index: int, value: float, record: EvalRecord) -> Decision:
        history.append(history_row(record))
        if record.milestone >= plan.config.max_samples:
            return Decision.CONTINUE  # the last milestone goes out with the outcome, below
        metrics = {
            "samples": record.milestone,
            "samples_seen": record.samples,
            "milestone": index,
            "history": list(history),
            "node": node,
            WARNINGS_KEY: list(said),
            **plan.attrs(),
        }
        if math.isfinite(value):
            metrics["objective"] = value
        tune.report(clean_json(metrics))
        return Decision.CONTINUE  # ASHA stops a trial by ending it, not by an answer here

    with kept_warnings(said):
        outcome = job.run(plan, on_milestone)
    final = {**plan.attrs(), **outcome.attrs(), "node": node, "final": True, "samples_seen": outcome.samples}
    final[WARNINGS_KEY] = said
    del final["samples"]  # not on ASHA's time axis (see above)
    del final["config"]  # Ray's own key for the trial's config, which holds the plan already
    if outcome.value is not None:
        final["objective"] = outcome.value
    final = clean_json(final)
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, OUTCOME_FILE).write_text(json.dumps(final))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(folder))


# -- records from Ray's results -----------------------------------------------------------
def record_from_result(
    metrics: Mapping[str, Any], config: Mapping[str, Any], error: BaseException | None
) -> TrialRecord:
    """A :class:`TrialRecord` from one Ray trial: its last reported metrics and its config."""
    plan = config[PLAN_KEY]
    stored = metrics.get("status") if metrics.get("final") else None
    status = None if stored is None else TrialStatus(stored)
    message = str(metrics.get("message", ""))
    if status is None:
        if error is not None:
            status, message = TrialStatus.FAILED, f"{type(error).__name__}: {error}"
        else:
            status = TrialStatus.PRUNED if metrics.get("samples") else TrialStatus.FAILED
            if status is TrialStatus.PRUNED:  # as the embedded backend says it of a trial its pruner stopped
                message = (
                    f"stopped by Ray Tune at milestone {int(metrics['samples'])} (its scheduler, or the run's end)"
                )
    value = metrics.get("objective")
    return TrialRecord(
        number=int(config[TRIAL_NUMBER_KEY]),
        status=status,
        batch_size=plan["batch_size"],
        lr=plan["lr"],
        temperature=plan["temperature"],
        value=float(value) if value is not None and math.isfinite(float(value)) else None,
        samples=int(metrics.get("samples_seen", metrics.get("samples", 0)) or 0),
        params=dict(plan["params"]),
        config=dict(plan["config"]),
        history=list(metrics.get("history", [])),
        message=message,
        worker=metrics.get("node"),
        traceback=metrics.get("traceback"),
        n_train=metrics.get("n_train"),
        unread_params=list(metrics.get("unread_params", [])),
        other_optimizer=metrics.get("other_optimizer"),
    )
