"""What a study returns (:class:`StudyResult`), and a trial record from an Optuna trial.

The records themselves (trials, re-scoring, the probe) are plain data in
:mod:`bstune.records`; this module adds what needs the study layer: Optuna, the prior,
and the report of a result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bstune._files import replace_text
from bstune._keys import FROM_PROBE_ATTR
from bstune.errors import ConfigError
from bstune.metrics import Direction, infer_direction
from bstune.optim import OptimizerSpec
from bstune.records import ProbeResult, Rescored, TrialRecord, TrialStatus, clean_dict, clean_json
from bstune.report import Report, build_report
from bstune.study._prior import Prior
from bstune.training import TrainConfig

__all__ = [
    "Rescored",
    "StudyResult",
    "TrialRecord",
    "TrialStatus",
    "clean_dict",
    "clean_json",
    "trial_line",
    "trial_record",
    "trial_records",
]

_NOT_METRICS = frozenset({"milestone", "samples", "step", "lr", "gap"})  # the other columns of a trial's history
_OF_STATE = {  # a trial that wrote no status of its own: what Optuna says of it
    TrialState.COMPLETE: TrialStatus.COMPLETED,
    TrialState.PRUNED: TrialStatus.PRUNED,
    TrialState.FAIL: TrialStatus.FAILED,
    TrialState.RUNNING: TrialStatus.RUNNING,
    TrialState.WAITING: TrialStatus.WAITING,
}


def trial_record(trial: FrozenTrial) -> TrialRecord:
    """The record of an Optuna trial, from the user attributes a bstune trial writes."""
    attrs = trial.user_attrs
    stored = attrs.get("status")
    status = _OF_STATE[trial.state] if stored is None else TrialStatus(stored)
    value = trial.value if trial.state == TrialState.COMPLETE else attrs.get("best_value")
    return TrialRecord(
        number=trial.number,
        status=status,
        batch_size=attrs.get("batch_size"),
        lr=attrs.get("lr"),
        temperature=attrs.get("temperature"),
        value=value,
        samples=int(attrs.get("samples", 0)),
        params=dict(trial.params),
        config=attrs.get("config", {}),
        history=attrs.get("history", []),
        message=attrs.get("message", ""),
        batch_ceiling=attrs.get("batch_ceiling"),
        traceback=attrs.get("traceback"),
        worker=attrs.get("worker"),
        from_probe=bool(attrs.get(FROM_PROBE_ATTR, False)),
        n_train=attrs.get("n_train"),
        unread_params=list(attrs.get("unread_params", [])),
        other_optimizer=attrs.get("other_optimizer"),
    )


def trial_records(trials: list[FrozenTrial]) -> list[TrialRecord]:
    """The records of a study's trials; an interrupted trial whose config has run again says by which trial
    (its stored message says only that it will, as the interrupt wrote it before the resume)."""
    rerun = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs and t.state.is_finished()}
    records = [trial_record(t) for t in trials]
    return [
        replace(r, message=f"interrupted; its config ran again as trial {rerun[r.number]}")
        if r.status == TrialStatus.INTERRUPTED and r.number in rerun
        else r
        for r in records
    ]


def trial_line(trial: FrozenTrial, objective: str) -> str:
    """A finished trial in one line: ``trial 3 completed: B=16, lr=0.0151, val_loss=1.852, 4,000 samples``."""
    return record_line(trial_record(trial), objective)


def record_line(record: TrialRecord, objective: str) -> str:
    """:func:`trial_line` of a record (a Ray trial's, say)."""
    parts = [
        f"B={record.batch_size}" if record.batch_size is not None else "",
        f"lr={record.lr:.3g}" if record.lr else "",
    ]
    if record.value is not None:
        parts.append(f"{objective}={record.value:.4g}")
    parts.append(f"{record.samples:,} samples")
    line = f"trial {record.number} {record.status}: " + ", ".join(p for p in parts if p)
    message = str(record.message or "")
    return line + (f" ({message})" if message and str(record.status) != "completed" else "")


@dataclass
class StudyResult:
    """The outcome of :meth:`bstune.Study.run`.

    ``best_config`` holds what to train with: batch size, learning rate and every
    other hyperparameter of the best completed trial; settings only, nothing derived
    from them (results written before held the effective temperature here too: it is
    dropped on loading).
    With re-scoring (``rescored``, the best few trials trained again at other seeds)
    the best trial is the one with the best mean over its seeds, and ``best_value`` is
    that mean; without, the best single trial and its value.

    ``directions`` says, for each recorded quantity (``train_loss``, ``val_loss``,
    ``train_<metric>``, ``val_<metric>``), whether it is minimized or maximized, as the
    Task declared; a result written by an older bstune has none (see :meth:`direction_of`).
    """

    study_name: str
    mode: str
    objective: str
    direction: str
    best_config: dict[str, Any]
    best_value: float
    trials: list[TrialRecord]
    probe: ProbeResult | None
    prior: Prior | None
    budget_samples: int
    samples_probe: int
    optuna_study: optuna.Study | None = field(default=None, repr=False)
    best_trial: int | None = None  # the number of the trial best_config comes from
    rescored: list[Rescored] = field(default_factory=list)
    directions: dict[str, str] = field(default_factory=dict)
    # the direct measurement of B_crit (CriticalBatchMeasurement.to_dict()), with critical_batch="measure"
    critical_measured: dict[str, Any] | None = None
    # the search space's optimizer family: a training function's best_config does not name the optimizer it
    # built, and the report's LR table follows the family's rule (None: a result written by an older bstune)
    optimizer: str | None = None
    # the search space's whole optimizer (OptimizerSpec's fields), which a training function's trials were
    # given for ctx.make_optimizer; None: a task's study (its Task holds it), or a result written before
    optimizer_spec: dict[str, Any] | None = None
    # what trained the trials: "task" (bstune's trainer) or "function" (the user's own loop); None: written before
    subject: str | None = None
    # re-scoring runs an earlier run of this study stored for candidates or seeds this run does not use (a resume
    # with other rescore settings, or whose new trials changed the best few): counted as spent
    samples_rescore_unused: int = 0
    # the pruner that stopped trials early, by name (an Optuna pruner object: its class), as the run that ended
    # the study had it (a resume may change it); None: a result written before it was kept
    pruner: str | None = None

    def metric_names(self) -> list[str]:
        """The quantities this study recorded, by the names a target or an objective uses."""
        names = {"train_loss", "val_loss", *self.directions}
        for trial in self.trials:
            for row in trial.history:
                names.update(k for k in row if k not in _NOT_METRICS)
        return sorted(names)

    def metric_directions(self) -> dict[str, Direction]:
        """Each recorded quantity whose direction is known, with it (see :meth:`direction_of`)."""
        out = {}
        for name in self.metric_names():
            direction = self._direction(name)
            if direction is not None:
                out[name] = direction
        return out

    def _direction(self, name: str) -> Direction | None:
        if name in self.directions:
            return Direction(self.directions[name])
        if name == self.objective:  # an older result: the study optimised it in its direction
            return Direction(self.direction)
        return infer_direction(name)  # an older result: the loss, and names that say it

    def direction_of(
        self,
        metric: str,
        *,
        source: str = "report",
        field: str | None = "target.metric",
        given: Direction | str | None = None,
    ) -> Direction:
        """Whether ``metric`` is minimized or maximized.

        As the Task declared it (stored with the result); for a result written by an
        older bstune, which stored none: the objective's is the study's direction, the
        others are read from their names (``infer_direction``). ``given`` (a target's own
        ``direction``) says it where the result does not: a training function's study
        knows the direction of its objective and losses only.

        Raises:
            ConfigError: the study recorded no ``metric`` (the message lists those it did),
                an older result does not say its direction and its name does not tell (and
                none is ``given``), or ``given`` contradicts the one the result holds.
        """
        known = self.metric_names()
        if metric not in known:
            raise ConfigError(
                f"study {self.study_name!r} recorded no metric {metric!r}; known metrics: {', '.join(known)}",
                source=source,
                field=field,
            )
        direction = self._direction(metric)
        if given is not None:
            # on the command line the direction is an option of its own, which the error names
            where = ("--target-direction", None) if source.startswith("--") else (source, "target.direction")
            try:
                said = Direction(given)
            except ValueError:
                raise ConfigError(
                    f"must be 'minimize' or 'maximize', got {given!r}", source=where[0], field=where[1]
                ) from None
            # a direction the result holds (declared, or an older result's objective's) is not overridden
            held = metric in self.directions or metric == self.objective
            if direction is not None and held and said != direction:
                raise ConfigError(
                    f"{metric!r} is {direction.value}d in this study, as its result says; the target says {said.value}",
                    source=where[0],
                    field=where[1],
                )
            # as a study refuses it for its objective: against a name's whole words only (val_accuracy), not a guess
            # from a part of one (lossless_ratio), where the direction given stands
            named = None if held else infer_direction(metric, whole_words=True)
            if named is not None and said != named:
                raise ConfigError(
                    f"{said.value!r} contradicts {metric!r}, whose name says {named.value!r}; leave the direction out",
                    source=where[0],
                    field=where[1],
                )
            return said
        if direction is None:
            raise ConfigError(
                f"this result does not say whether {metric!r} is minimized or maximized, and its name does not "
                "tell (a training function's study knows the direction of its objective only; a result written by "
                f"an older bstune, of none); give the target's direction: --target-direction maximize (or minimize), "
                'or "direction" in the target',
                source=source,
                field=field,
            )
        return direction

    @property
    def samples_rescore(self) -> int:
        """Training samples the re-scoring runs spent, an earlier run's unused ones included."""
        return sum(r.samples for r in self.rescored) + self.samples_rescore_unused

    @property
    def samples_total(self) -> int:
        """Training samples spent: the probe, every trial (pruned and failed ones included) and re-scoring."""
        return self.samples_probe + sum(t.samples for t in self.trials) + self.samples_rescore

    def to_dict(self) -> dict[str, Any]:
        return clean_dict(
            {
                "study_name": self.study_name,
                "mode": self.mode,
                "objective": self.objective,
                "direction": str(self.direction),
                "directions": {k: str(v) for k, v in self.directions.items()},
                "best_config": self.best_config,
                "best_value": self.best_value,
                "budget_samples": self.budget_samples,
                "samples_probe": self.samples_probe,
                "samples_rescore": self.samples_rescore,
                "samples_total": self.samples_total,
                "best_trial": self.best_trial,
                "rescored": [r.to_dict() for r in self.rescored],
                "probe": self.probe.to_dict() if self.probe else None,
                "prior": self.prior.to_dict() if self.prior else None,
                "trials": [t.to_dict() for t in self.trials],
                "critical_measured": self.critical_measured,
                "optimizer": self.optimizer,
                "optimizer_spec": self.optimizer_spec,
                "subject": self.subject,
                "samples_rescore_unused": self.samples_rescore_unused,
                "pruner": self.pruner,
            }
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyResult:
        """Rebuild a result from :meth:`to_dict` (``result.json``); the Optuna study is not attached."""
        return cls(
            study_name=data["study_name"],
            mode=data["mode"],
            objective=data["objective"],
            direction=data["direction"],
            best_config={k: v for k, v in data["best_config"].items() if k != "temperature"},  # derived, not a setting
            best_value=float(data["best_value"]),
            trials=[TrialRecord.from_dict(t) for t in data["trials"]],
            probe=ProbeResult.from_dict(data["probe"]) if data.get("probe") else None,
            prior=Prior(**data["prior"]) if data.get("prior") else None,
            budget_samples=int(data["budget_samples"]),
            samples_probe=int(data["samples_probe"]),
            best_trial=data.get("best_trial"),
            rescored=[Rescored.from_dict(r) for r in data.get("rescored", [])],
            directions={str(k): str(Direction(v)) for k, v in data.get("directions", {}).items()},
            critical_measured=data.get("critical_measured"),
            optimizer=data.get("optimizer"),
            optimizer_spec=data.get("optimizer_spec"),
            subject=data.get("subject"),
            samples_rescore_unused=int(data.get("samples_rescore_unused") or 0),
            pruner=data.get("pruner"),
        )

    @classmethod
    def load(cls, path: str | Path) -> StudyResult:
        """Read ``result.json`` from a folder (or the file itself)."""
        file = Path(path)
        file = file / "result.json" if file.is_dir() else file
        return cls.from_dict(json.loads(file.read_text()))

    def report(self, target: dict[str, Any] | None = None, *, n_workers: int = 1) -> Report:
        """Analyse the trials: critical batch size, compute-optimal batch size, gap, recommendation.

        Returns a :class:`bstune.report.Report`; ``target`` is ``{"metric": ..., "value": ...}``,
        reached in the metric's own direction (:meth:`direction_of`).

        Raises:
            ConfigError: a bad target, or a metric this study did not record.
        """
        return build_report(self, target, n_workers=n_workers)

    def best_train_config(self) -> TrainConfig:
        """The recommended trial's run as a :class:`~bstune.TrainConfig`: its batch size, rate, schedule (warmup
        in samples of its budget), seed and the rest (the device ``"auto"``, not the one it ran on), to train it
        again with :func:`bstune.train` (a task;
        ``model_kwargs`` for the model factory are in ``best_config``) or
        :func:`bstune.training.run_function` (a training function, with ``params=best_config``).

        Raises:
            ConfigError: the study recommended no trial, or the trial holds no config (an older result).
        """
        trial = next((t for t in self.trials if t.number == self.best_trial), None)
        if trial is None or not trial.config:
            raise ConfigError(
                f"study {self.study_name!r} names no recommended trial with a config to train",
                source="StudyResult",
                field="best_trial",
            )
        # the device the trial ran on (a worker's "cuda:3") may not exist where it is trained again
        config = {k: v for k, v in trial.config.items() if k != "model_kwargs"} | {"device": "auto"}
        return TrainConfig.from_dict(config, source=f"trial {trial.number}'s config")

    def best_optimizer(self) -> OptimizerSpec:
        """The optimizer the recommended trial trained with, to pass to :func:`bstune.training.run_function`
        (``optimizer=``) when training it again with a training function: the search space's family and fixed
        settings, with the values the trial drew for searched ones (``momentum``, ``betas``,
        ``weight_decay``). A task's study needs none: its :class:`~bstune.Task` holds the optimizer.

        Example:
            >>> r = StudyResult("s", "baseline", "val_loss", "minimize", {"batch_size": 32, "lr": 1e-3,
            ...     "betas": [0.9, 0.99], "weight_decay": 0.05}, 0.1, [], None, None, 1000, 0, optimizer="adamw")
            >>> r.best_optimizer()
            OptimizerSpec(family='adamw', momentum=0.0, nesterov=False, weight_decay=0.05, betas=(0.9, 0.99), eps=1e-08)
        """
        if self.optimizer_spec is not None:
            spec = OptimizerSpec(**{**self.optimizer_spec, "betas": tuple(self.optimizer_spec["betas"])})
        else:  # a result written before the whole spec was kept: its family, the rest from best_config
            spec = OptimizerSpec(family=self.optimizer or "sgd")  # type: ignore[arg-type]
        drawn: dict[str, Any] = {"weight_decay": self.best_config.get("weight_decay", spec.weight_decay)}
        if spec.family == "sgd":
            drawn["momentum"] = self.best_config.get("momentum", spec.momentum)
            drawn["nesterov"] = spec.nesterov and drawn["momentum"] > 0  # as the trial's optimizer was built
        else:
            drawn["betas"] = tuple(self.best_config.get("betas", spec.betas))
        return replace(spec, **drawn)

    def save(self, path: str | Path) -> Path:
        """Write ``result.json`` into folder ``path`` (created); returns the file (``bstune report`` reads it)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / "result.json"
        replace_text(out, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return out
