"""The settings of a study: one frozen object, checked when it is made.

:class:`StudySettings` holds what shapes a study whatever backend runs it (budget,
trials, milestones, objective, pruning, re-scoring, the probe) and how processes
sharing one store tell each other they are alive. Where trials run and are stored is
the backend's: :class:`~bstune.study.OptunaBackend` (a storage) or
:class:`~bstune.study.RayBackend` (a :class:`~bstune.study.RaySettings`), passed in
beside the settings, not flattened into them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna

from bstune._validate import count_reason, is_int, number_reason
from bstune.errors import ConfigError
from bstune.metrics import Direction
from bstune.noise import resolve_device
from bstune.study._probe_plan import ProbeSettings
from bstune.study._pruners import PRUNERS

__all__ = ["Mode", "StudySettings"]

Mode = Literal["prior", "baseline"]


def _bad(name: str, reason: str) -> ConfigError:
    return ConfigError(reason, source="Study", field=name)


@dataclass(frozen=True)
class StudySettings:
    """What a study runs: every field is checked here, and a bad one names itself.

    Args:
        n_trials: trials to finish (completed, pruned or failed), counting those a
            resumed storage already holds.
        budget_samples: training samples of a full trial; pruned trials use less. At
            least ``(n_evals - 1) * B + 1`` at the space's largest batch size B, so that
            every milestone falls on a step of its own; a probe that will cost more than
            ``n_trials * budget_samples`` is warned about before it runs.
        seed: seeds the sampler, the probe and every trial's model init and data order
            (the same for all trials, so they differ only in their hyperparameters).
        mode: ``"prior"`` searches around the probe's noise scale and the eta/B rule;
            ``"baseline"`` searches plain log-uniform (B, eta) over the space's ranges
            with everything else equal, to measure what the prior is worth.
        pruner: ``"hyperband"`` (default), ``"median"``, ``"successive_halving"``,
            ``"none"`` or an Optuna pruner; it sees milestone indices as steps. On the Ray
            backend the name picks a Ray scheduler on training samples: ASHA for
            ``"hyperband"`` and ``"successive_halving"``, the median stopping rule for
            ``"median"``, FIFO (no early stopping) for ``"none"``.
        n_evals: evaluations (and pruning decisions) per full trial; the default 9 puts
            Hyperband's rungs (1, 3, 9 with reduction factor 3) at a ninth, a third and
            the end of the budget. A stop at the last milestone is ignored (the trainer
            treats it so): a trial that has spent its whole budget completes.
        objective: the record field to optimise: ``"val_loss"`` (default), ``"train_loss"``
            or a metric such as ``"val_accuracy"``.
        direction: ``"minimize"`` or ``"maximize"``; by default (``None``) the objective's
            own, as the task declares it (losses are minimized; see :class:`bstune.Metric`).
            A direction that contradicts the objective's is an error.
        probe: settings of the probe (the prior mode only).
        device: trial device; ``"auto"`` picks CUDA when available. With ``devices``, the
            device of the probe and the re-scoring (default: the first of ``devices``).
        devices: run one trial per device at once, each in its own worker process pinned
            to its device (the embedded backend only): ``"all"`` (every CUDA device torch
            sees) or a list such as ``["cuda:0", "cuda:1"]`` (no repeats). ``None``
            (default): every trial on ``device``. Implies ``parallel_trials=len(devices)``.
        parallel_trials: trials run at once, each in its own worker process (the embedded
            backend only; Ray runs trials at once by itself). ``1`` (default): one trial
            after the other in this process. ``K > 1`` without ``devices``: K processes on
            ``device`` (e.g. the CPU, each with its share of the cores as torch threads).
            ``None`` (default): ``len(devices)``, else 1.
            Not to be confused with ``num_workers``, which loads *one* trial's batches in
            DataLoader processes; the two multiply. Worker processes share the study's
            storage (with none, a temporary journal file, removed with the study object)
            and draw different configs; see :meth:`bstune.Study.run`.
        devices_per_trial: devices (processes) each trial trains on, data-parallel
            (:func:`bstune.training.train_data_parallel`: DDP, ``batch_size`` the global batch,
            the noise scale from the ranks' gradients). ``1`` (default): one process per
            trial. With ``devices``, they are dealt out in groups of this size (its length a
            multiple of it), one group per trial at once; without, each trial takes
            ``cuda:0`` ... ``cuda:k-1`` (with ``device`` ``"cuda"`` or ``"auto"`` on a GPU
            machine; ``parallel_trials`` workers take consecutive groups) or ``k``
            processes on the CPU (gloo). On the Ray backend a trial asks for this many GPUs
            (or CPUs, on a cluster without GPUs) unless ``resources_per_trial`` says
            otherwise. A task's trials only: a training function runs in one process.
            The probe measures on one device.
        num_workers: DataLoader worker processes that load each trial's training batches
            (``TrainConfig.num_workers``; a training function's ``ctx.loader`` takes it as its
            default): worth it when a dataset's ``__getitem__`` does real work (decoding,
            augmentation). The batches are the same as in-process, so the trials' values are too
            (with a random augmentation, each worker draws from its own seeded generator).
            ``0`` (default) loads in the trial's own process.
        progress: show progress bars on stderr: the probe's phases, the trials, the re-scoring.
        study_name: name inside the storage; default ``"bstune-<task name>"``.
        heartbeat_interval: seconds between the heartbeats a running trial writes to the
            storage, so that other processes on the study can tell it is alive.
        grace_period: seconds without a heartbeat after which a running trial whose
            owner is on another host counts as abandoned and is run again (an owner on
            this host is checked directly: its trial is taken over as soon as its process
            is gone). At least twice ``heartbeat_interval``; hosts' clocks must agree to
            well within it.
        rescore_top, rescore_seeds: before recommending, the ``rescore_top`` best completed
            trials are trained again at ``rescore_seeds`` other seeds (full budget, no
            pruning), and the one with the best mean is recommended: one seed moves a
            config's loss by several percent, so the best single trial is partly the
            luckiest seed. ``0`` turns it off. Its samples count in the study's total;
            a resumed study keeps what it re-scored.
        critical_batch: ``"fit"`` (default): the report's B_crit is fitted to the trials'
            learning curves, as they fell. ``"measure"``: after the search, B_crit is also
            measured directly (:func:`bstune.critical.measure_critical_batch`): branches at a
            ladder of batch sizes and two seeds from checkpoints of the recommended config,
            over training; it costs tens of trials' samples (counted apart, in
            ``critical_measured["cost_samples"]``), and the report leads with it. A task's
            studies only (the branches train with bstune's trainer); a resumed study keeps it.

    Example:
        >>> StudySettings(n_trials=8, budget_samples=9000).eval_every
        1000
        >>> StudySettings(n_trials=0)
        Traceback (most recent call last):
        ...
        bstune.errors.ConfigError: Study: n_trials: must be a positive integer, got 0
    """

    n_trials: int = 40
    budget_samples: int = 300_000
    seed: int = 0
    mode: Mode = "prior"
    pruner: str | optuna.pruners.BasePruner = "hyperband"
    n_evals: int = 9
    objective: str = "val_loss"
    direction: Direction | Literal["minimize", "maximize"] | None = None
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    device: str = "auto"
    devices: Literal["all"] | Sequence[str] | None = None
    parallel_trials: int | None = None
    devices_per_trial: int = 1
    num_workers: int = 0
    progress: bool = True
    study_name: str | None = None
    heartbeat_interval: float = 30.0
    grace_period: float = 600.0
    rescore_top: int = 3
    rescore_seeds: int = 2
    critical_batch: Literal["fit", "measure"] = "fit"

    def __post_init__(self) -> None:
        for name in ("n_trials", "budget_samples"):
            if (reason := count_reason(getattr(self, name))) is not None:
                raise _bad(name, reason)
        if self.mode not in ("prior", "baseline"):
            raise _bad("mode", f"must be 'prior' or 'baseline', got {self.mode!r}")
        if not is_int(self.n_evals) or self.n_evals < 1:
            raise _bad("n_evals", f"must be an integer >= 1, got {self.n_evals!r}")
        if self.n_evals > self.budget_samples:  # the budget is the likelier slip: say so, with both values
            raise _bad(
                "budget_samples",
                f"{self.budget_samples} samples cannot hold {self.n_evals} evaluations (n_evals): give at least "
                f"{self.n_evals} samples, in practice many batches' worth",
            )
        if self.direction is not None:
            object.__setattr__(self, "direction", Direction.coerce(self.direction, source="Study"))
        if isinstance(self.pruner, str) and self.pruner not in PRUNERS:
            raise _bad("pruner", f"unknown pruner {self.pruner!r}; expected one of {', '.join(PRUNERS)}")
        if not isinstance(self.pruner, str | optuna.pruners.BasePruner):
            raise _bad("pruner", f"must be a pruner's name or an Optuna pruner, got {type(self.pruner).__name__}")
        if not isinstance(self.probe, ProbeSettings):
            raise _bad("probe", f"must be a ProbeSettings, got {type(self.probe).__name__}")
        if (reason := number_reason(self.heartbeat_interval, unit="of seconds")) is not None:
            raise _bad("heartbeat_interval", reason)
        if number_reason(self.grace_period) is not None or self.grace_period < 2 * self.heartbeat_interval:
            raise _bad(
                "grace_period",
                f"must be at least twice heartbeat_interval ({self.heartbeat_interval!r} s), got {self.grace_period!r}",
            )
        if (reason := count_reason(self.seed, minimum=0)) is not None or self.seed >= 2**32:
            raise _bad("seed", reason or f"must be below 2**32 (NumPy's seeds), got {self.seed}")
        for name in ("rescore_top", "rescore_seeds", "num_workers"):
            if (reason := count_reason(getattr(self, name), minimum=0)) is not None:
                raise _bad(name, reason)
        if self.critical_batch not in ("fit", "measure"):
            raise _bad("critical_batch", f"must be 'fit' or 'measure', got {self.critical_batch!r}")
        self._check_devices()

    def _check_devices(self) -> None:
        """``devices`` resolved to a tuple of distinct device names; ``parallel_trials``, if given, must fit it.

        Neither ``parallel_trials`` nor ``device`` is rewritten (``dataclasses.replace`` of these
        settings with other devices must not meet a count derived from the old ones): see
        :attr:`workers` and :attr:`main_device`.
        """
        if self.parallel_trials is not None and (reason := count_reason(self.parallel_trials)) is not None:
            raise _bad("parallel_trials", reason)
        if (reason := count_reason(self.devices_per_trial)) is not None:
            raise _bad("devices_per_trial", reason)
        if self.devices is None:
            return
        devices = _resolve_devices(self.devices)
        k = self.devices_per_trial
        if len(devices) % k:
            raise _bad(
                "devices_per_trial",
                f"the {len(devices)} devices ({', '.join(devices)}) do not split into trials of {k}; "
                f"list a multiple of {k} devices",
            )
        if self.parallel_trials is not None and self.parallel_trials != len(devices) // k:
            raise _bad(
                "parallel_trials",
                f"devices runs one trial per {'device' if k == 1 else f'{k} devices'}, {len(devices) // k} at once "
                f"({', '.join(devices)}); got parallel_trials={self.parallel_trials!r}: leave it unset",
            )
        object.__setattr__(self, "devices", devices)

    @property
    def workers(self) -> int:
        """Trials at once: one per device of ``devices``, else ``parallel_trials`` (default 1: in this process)."""
        if self.devices is not None:
            return len(self.devices) // self.devices_per_trial
        return self.parallel_trials or 1

    @property
    def main_device(self) -> str:
        """Where the study's own process trains (the probe, a re-scoring run): ``device``, or with
        ``devices`` and ``device="auto"``, the first of them."""
        return self.devices[0] if self.devices is not None and self.device == "auto" else self.device

    @classmethod
    def build(cls, base: StudySettings | None = None, **changes: Any) -> StudySettings:
        """``base`` (default: the defaults) with ``changes``; an unknown name is refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise _bad(unknown[0], f"no such setting; the settings are {', '.join(sorted(known))}")
        return dataclasses.replace(base, **changes) if base is not None else cls(**changes)

    @property
    def eval_every(self) -> int:
        """Samples between milestones: exactly ``n_evals`` of them, the last at the full budget."""
        return max(1, -(-self.budget_samples // self.n_evals))

    @property
    def pruner_name(self) -> str:
        return self.pruner if isinstance(self.pruner, str) else type(self.pruner).__name__


def _resolve_devices(devices: object) -> tuple[str, ...]:
    """``"all"`` or a list of device names as distinct names torch knows and this machine has."""
    if devices == "all":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise _bad(
                "devices",
                "'all' means every CUDA device, and torch sees none on this machine; "
                "to run trials at once on the CPU, set parallel_trials (e.g. parallel_trials=2)",
            )
        return tuple(f"cuda:{i}" for i in range(count))
    if isinstance(devices, str) or not isinstance(devices, Sequence) or not devices:
        raise _bad(
            "devices", f"must be 'all' or a non-empty list of devices such as ['cuda:0', 'cuda:1'], got {devices!r}"
        )
    names: list[str] = []
    for device in devices:
        if not isinstance(device, str):
            raise _bad("devices", f"must name devices as strings such as 'cuda:0', got {device!r}")
        try:
            dev = resolve_device(device)
        except ConfigError as exc:
            raise _bad("devices", exc.reason) from None
        name = f"{dev.type}:0" if dev.type == "cuda" and dev.index is None else str(dev)
        if name in names:
            raise _bad(
                "devices",
                f"{device!r} is listed twice: one trial per device (for several trials on one device, set parallel_trials)",
            )
        names.append(name)
    return tuple(names)
