"""What a study keeps about each trial, and what it returns."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bstune.errors import ConfigError
from bstune.metrics import Direction, infer_direction
from bstune.study._prior import Prior
from bstune.study._probe import ProbeResult

if TYPE_CHECKING:
    from bstune.report import Report

__all__ = ["Rescored", "StudyResult", "TrialRecord", "clean_dict", "clean_json"]

_NOT_METRICS = frozenset({"milestone", "samples", "step", "lr", "gap"})  # the other columns of a trial's history


def clean_dict(value: dict[str, Any]) -> dict[str, Any]:
    """:func:`clean_json` of a dict, typed as one."""
    out: dict[str, Any] = clean_json(value)
    return out


def clean_json(value: Any) -> Any:
    """Replace non-finite floats by ``None`` (JSON has no inf/nan)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


@dataclass(frozen=True)
class TrialRecord:
    """One trial: its derived batch size and learning rate, outcome and learning curve."""

    number: int
    status: str  # completed, pruned, diverged, oom, failed, running
    batch_size: int | None
    lr: float | None
    temperature: float | None  # eta/(B(1-m))
    value: float | None  # the objective (best validation loss over its milestones, by default)
    samples: int  # training samples the trial used
    params: dict[str, Any]  # the sampled coordinates and extra hyperparameters
    config: dict[str, Any]  # the full TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    worker: str | None = None  # where it ran: a Ray node id (the Ray backend), else None
    batch_ceiling: int | None = None  # out of memory: the batch-size cap for the rest of the study
    traceback: str | None = None  # failed: where the task's code raised

    @classmethod
    def from_frozen(cls, trial: FrozenTrial) -> TrialRecord:
        attrs = trial.user_attrs
        status = attrs.get("status")
        if status is None:
            status = {
                TrialState.COMPLETE: "completed",
                TrialState.PRUNED: "pruned",
                TrialState.FAIL: "failed",
                TrialState.RUNNING: "running",
                TrialState.WAITING: "waiting",
            }[trial.state]
        value = trial.value if trial.state == TrialState.COMPLETE else attrs.get("best_value")
        return cls(
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
        )

    def to_dict(self) -> dict[str, Any]:
        return clean_dict(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        return cls(**data)


@dataclass(frozen=True)
class Rescored:
    """One candidate's values: its own trial's first, then one per re-scoring seed (None: it did not complete)."""

    trial: int
    seeds: list[int]
    values: list[float | None]
    samples: int  # spent on the re-scoring runs (the trial's own samples are counted with the trial)

    @property
    def complete(self) -> bool:
        return all(v is not None and math.isfinite(v) for v in self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(v for v in self.values if v is not None) if self.complete else None

    @property
    def sem(self) -> float | None:
        """Standard error of the mean over the seeds (None with fewer than two values)."""
        if not self.complete or len(self.values) < 2:
            return None
        return statistics.stdev(v for v in self.values if v is not None) / math.sqrt(len(self.values))

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "seeds": list(self.seeds),
            "values": list(self.values),
            "samples": self.samples,
            "mean": self.mean,
            "sem": self.sem,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rescored:
        return cls(
            trial=int(data["trial"]),
            seeds=[int(s) for s in data["seeds"]],
            values=[None if v is None else float(v) for v in data["values"]],
            samples=int(data["samples"]),
        )


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

    def direction_of(self, metric: str, *, source: str = "report", field: str | None = "target.metric") -> Direction:
        """Whether ``metric`` is minimized or maximized.

        As the Task declared it (stored with the result); for a result written by an
        older bstune, which stored none: the objective's is the study's direction, the
        others are read from their names (``infer_direction``).

        Raises:
            ConfigError: the study recorded no ``metric`` (the message lists those it did),
                or an older result does not say its direction and its name does not tell.
        """
        known = self.metric_names()
        if metric not in known:
            raise ConfigError(
                f"study {self.study_name!r} recorded no metric {metric!r}; known metrics: {', '.join(known)}",
                source=source,
                field=field,
            )
        direction = self._direction(metric)
        if direction is None:
            raise ConfigError(
                f"this result (written by an older bstune) does not say whether {metric!r} is minimized or "
                f'maximized, and its name does not tell; add "directions": {{"{metric}": "maximize"}} '
                '(or "minimize") to its result.json',
                source=source,
                field=field,
            )
        return direction

    @property
    def samples_rescore(self) -> int:
        """Training samples the re-scoring runs spent."""
        return sum(r.samples for r in self.rescored)

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
        from bstune.report import build_report

        return build_report(self, target, n_workers=n_workers)

    def save(self, path: str | Path) -> Path:
        """Write ``result.json`` into folder ``path`` (created); returns the file."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / "result.json"
        out.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return out
