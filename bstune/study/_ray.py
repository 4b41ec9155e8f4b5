"""The Ray Tune backend: the same study, scheduled by Ray on a cluster.

Ray does the scheduling; bstune only describes the trials:

- **Search**: Ray's ``OptunaSearch`` with the study's define-by-run space, so trials
  draw the same prior coordinates (or plain log-uniform B, eta) with the same
  multivariate TPE as the embedded backend. The driver derives each trial's full
  configuration (:class:`~bstune.study._trial_plan.TrialPlanner`) and ships it in the
  trial's config; a trial that runs out of memory lowers the batch cap of the trials
  drawn after it. The probe's trial-long run is the searcher's trial 0, as
  it is the embedded study's: Tune runs one trial less, and TPE and the prior's
  schedule count it.
- **Early stopping**: ``ASHAScheduler`` (the default ``pruner="hyperband"``; the
  median stopping rule for ``"median"``, none for ``"none"``) with
  ``time_attr="samples"``: trials are compared at equal training samples, whatever
  their batch sizes, at the same milestones the embedded backend reports.
- **Resources**: one trial per GPU where the cluster has GPUs, one CPU per trial
  otherwise (``tune.with_resources``); the probe runs as a Ray task with the same
  resources, so it measures the kind of device the trials use. Trial workers are
  reused from one trial to the next (no interpreter and torch start per trial), and
  Tune may keep as many trials pending as fit at once (with a search algorithm it
  keeps one by default, which runs short trials one after the other).
- **Fault tolerance**: results and checkpoints under ``storage_path/<study_name>``;
  a trial whose worker dies is retried (``FailureConfig(max_failures)``); a study
  whose driver died is picked up with ``Tuner.restore``. A trial that finished
  reports a small checkpoint holding its outcome, and every checkpoint forces an
  experiment snapshot, so a restored study replays a finished trial's outcome
  instead of training it again. A trial interrupted mid-run restarts from scratch.

Ray is imported lazily: the embedded default does not need it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bstune._keys import (
    CRITICAL_FILE,
    FROM_PROBE_ATTR,
    PLAN_KEY,
    RESCORED_FILE,
    STATE_FILE,
    TRIAL_NUMBER_KEY,
)
from bstune.errors import BstuneError, ConfigError
from bstune.metrics import Direction
from bstune.records import ProbeResult, Rescored, TrialRecord, TrialStatus, clean_json
from bstune.study._backend import Resumed, StudySpec, TrialBackend, TrialJob
from bstune.study._ray_cluster import (
    RaySettings,
    _init,
    _register_script_modules,
    _resources,
    _trials_at_once,
    import_ray,
    unreachable,
    use_auth_token,
)
from bstune.study._ray_search import GAVE_UP_FILE, adopted_trial, make_searcher
from bstune.study._ray_search import PlannerSpace as PlannerSpace  # where searcher states saved before pickled it
from bstune.study._ray_trial import WARNINGS_KEY, record_from_result, relay_warnings, train_trial, with_warnings
from bstune.study._records import record_line, trial_record
from bstune.study._resume import settings_mismatch, upgrade_settings
from bstune.study._settings import StudySettings
from bstune.study._trial import TrialOutcome
from bstune.study._trial_plan import TrialPlan, TrialPlanner

__all__ = [
    "RayBackend",
    "RaySettings",
    "import_ray",
    "make_scheduler",
    "unreachable",
    "use_auth_token",
]

logger = logging.getLogger(__name__)
trial_lines = logging.getLogger("bstune.trials")  # a line per finished trial (bstune run off a terminal)


# -- the driver ---------------------------------------------------------------------------
_NOT_SCALARS = ("history", "config", PLAN_KEY, "traceback", "unread_params", "other_optimizer", WARNINGS_KEY)


def _scalar_tensorboard() -> Any:
    """Ray's TensorBoard logger, minus the lists it cannot log (and warns about, naming bstune's fields)."""
    from ray.tune.logger import TBXLoggerCallback

    class ScalarTBXLogger(TBXLoggerCallback):  # type: ignore[misc]
        def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
            scalars = {k: v for k, v in result.items() if k not in _NOT_SCALARS}
            super().log_trial_result(iteration, trial, scalars)

    return ScalarTBXLogger()


def _trial_ends(objective: str, warned: set[tuple[str, str]]) -> Any:
    """At each finished Tune trial: what bstune warned of in its worker, once (``warned``); and a line
    (logger ``bstune.trials``) as the embedded backend says its own (``bstune run`` off a terminal promises
    them; Tune's own tables are off there)."""
    from ray.tune import Callback

    class TrialEnds(Callback):  # type: ignore[misc]
        def _say(self, trial: Any, error: BaseException | None) -> None:
            config, result = trial.config or {}, trial.last_result or {}
            if PLAN_KEY not in config or TRIAL_NUMBER_KEY not in config:
                return
            relay_warnings(result.get(WARNINGS_KEY) or [], f"in trial {config[TRIAL_NUMBER_KEY]}", warned)
            if trial_lines.isEnabledFor(logging.INFO):
                record = record_from_result(result, config, error)
                trial_lines.info("%s", record_line(record, objective))

        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            config = trial.config or {}
            if TRIAL_NUMBER_KEY in config:  # a milestone: ASHA may stop the trial before its final report
                relay_warnings(result.get(WARNINGS_KEY) or [], f"in trial {config[TRIAL_NUMBER_KEY]}", warned)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._say(trial, None)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._say(trial, getattr(trial, "error", None) or RuntimeError("the trial's worker failed"))

    return TrialEnds()


class _TuneNoise(logging.Filter):
    """Ray Tune's lines that contradict or repeat bstune's own: after a Ctrl-C, the ``Tuner.restore``
    call to resume with (bstune prints its command), and each trial cut before its first result,
    which has no metrics to fetch (at the interrupt, and again when the study resumes)."""

    DROP = ("Experiment has been interrupted", "Failed to fetch metrics for")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.DROP)


@contextlib.contextmanager
def _sigint_kept() -> Iterator[None]:
    """Put back the SIGINT handler ``Tuner.fit`` replaces: Ray puts its own back only once it has fired,
    so after a run that was not interrupted, the first Ctrl-C (during re-scoring, say) went to Ray's
    handler, which said it was stopping Tune and let the study run on to its report with exit 0."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and before is not None:
            signal.signal(signal.SIGINT, before)


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    quiet = _TuneNoise()
    loggers = [logging.getLogger(name) for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")]
    for log in loggers:
        log.addFilter(quiet)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(quiet)


def _cut_short(exp_dir: Path, errored: set[int]) -> int:
    """Trials of the experiment at ``exp_dir`` cut short by Ctrl-C, which a restore runs again.

    Tune takes the first Ctrl-C itself: it saves the experiment, then stops the running
    trials and marks them ``TERMINATED`` in memory, as it marks a trial the scheduler
    stopped, so the results :meth:`Tuner.fit` returns cannot tell a trial cut short from
    one ASHA pruned. The state it saved, which ``Tuner.restore`` reads, still has them
    running (or pending). But a trial whose worker died is marked ``ERROR`` after its
    actor is gone, which that state never hears of: the trials whose results hold an
    error (``errored``, by trial number) ended, whatever the state says.
    """
    from ray.tune import ExperimentAnalysis

    with _quiet_tune():
        trials = ExperimentAnalysis(str(exp_dir)).trials
    return sum(
        1
        for t in trials
        if t.status not in ("TERMINATED", "ERROR") and (t.config or {}).get(TRIAL_NUMBER_KEY) not in errored
    )


@contextlib.contextmanager
def _lenient_metrics() -> Iterator[None]:
    """While Tune runs the study: a result without ``objective`` is a trial without a value (it failed,
    diverged or ran out of memory before its first finite one), which ASHA and the searcher read as such.
    Tune's strict check took it for a misspelt metric and ended the whole experiment. The user's own
    setting is left as it was, before and after."""
    key = "TUNE_DISABLE_STRICT_METRIC_CHECKING"
    before = os.environ.get(key)
    os.environ[key] = "1" if before is None else before
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)


def _trial_dirname(trial: Any) -> str:
    """A short folder name: Ray's default spells out the whole config (the plan), past path limits."""
    return f"trial_{trial.trial_id}"


def make_scheduler(settings: StudySettings) -> Any:
    """The Ray scheduler that stands in for the Optuna pruner named ``pruner``.

    All of them read training samples as time (``time_attr="samples"``), so trials of
    different batch sizes are compared at equal compute, and the first comparison is at
    the first milestone.
    """
    from ray.tune import schedulers

    pruner, mode = settings.pruner, "min" if Direction(settings.direction) is Direction.MINIMIZE else "max"
    if pruner in ("hyperband", "successive_halving"):
        return schedulers.ASHAScheduler(
            time_attr="samples",
            metric="objective",
            mode=mode,
            max_t=settings.budget_samples,
            grace_period=settings.eval_every,
            reduction_factor=3,
            stop_last_trials=False,
        )
    if pruner == "median":

        class MedianNeverPausing(schedulers.MedianStoppingRule):  # type: ignore[misc]
            """Goes on where the rule would pause a trial to let a pending one run: a function
            trainable paused without a checkpoint would start over. (A ``min_time_slice`` past
            the budget is not enough: the rule still pauses once, at the first comparison.)"""

            def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
                action = str(super().on_trial_result(tune_controller, trial, result))
                return schedulers.TrialScheduler.CONTINUE if action == schedulers.TrialScheduler.PAUSE else action

        return MedianNeverPausing(
            time_attr="samples",
            metric="objective",
            mode=mode,
            grace_period=settings.eval_every,
            min_samples_required=5,
        )
    if pruner == "none":
        return schedulers.FIFOScheduler()
    raise ConfigError(f"the Ray backend has no scheduler for pruner {pruner!r}", source="Study", field="pruner")


def _load_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text()))


class RayBackend(TrialBackend):
    """Trials scheduled by Ray Tune on a cluster, side by side; see the module's docstring.

    Example: ``Study(task, space, backend=RayBackend(RaySettings(address="auto")))``, or
    ``Study(task, space, backend="ray", ray=RaySettings(...))``.
    """

    name = "ray"

    def __init__(self, settings: RaySettings | None = None) -> None:
        self.settings = settings or RaySettings()
        self._spec: StudySpec | None = None
        self._exp_dir: Path | None = None
        self._resources: dict[str, float] = {}
        self._adopted: dict[str, Any] | None = None  # the probe's run as trial 0 (adopt), as the state file keeps it
        self._tune_trials: int | None = None  # the trials the Tune experiment was started with (its num_samples)
        self._probe: dict[str, Any] | None = None  # the probe, as the state file keeps it
        self._warned: set[tuple[str, str]] = set()  # workers' warnings said on the driver (once each)

    def open(self, spec: StudySpec) -> Resumed:
        """Join the cluster and read the experiment's folder: its settings, probe and re-scoring."""
        use_auth_token(self.settings.address)
        ray = import_ray()
        _init(ray, self.settings)
        _register_script_modules()
        self._spec = spec
        self._exp_dir = exp_dir = self.settings.experiment_dir(spec.name)
        state = _load_state(exp_dir / STATE_FILE)
        if state is not None:
            where = f"study {spec.name!r} under {exp_dir.parent}"
            error = settings_mismatch(
                upgrade_settings(state["settings"]) or {}, spec.fingerprint, where, "study_name/storage_path"
            )
            if error is not None:
                raise ConfigError(error, source="Study", field="storage_path")
        # every finished trial checkpoints, and each checkpoint forces a snapshot of the experiment (deliberately:
        # it is what keeps a restored study from training a finished trial again); Ray warns about that by default
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        self._resources = _resources(ray, self.settings, spec.settings.devices_per_trial)
        exp_dir.mkdir(parents=True, exist_ok=True)
        probe = state.get("probe") if state is not None else None
        self._adopted = state.get("adopted") if state is not None else None
        self._tune_trials = state.get("tune_trials") if state is not None else None
        self._probe = probe
        self._write_state()
        rescored_file = exp_dir / RESCORED_FILE
        kept = [Rescored.from_dict(d) for d in json.loads(rescored_file.read_text())] if rescored_file.is_file() else []
        critical_file = exp_dir / CRITICAL_FILE
        critical = json.loads(critical_file.read_text()) if critical_file.is_file() else None
        return Resumed(probe=probe, rescored=kept, critical=critical)

    def run_probe(self, probe: Callable[..., ProbeResult], **kwargs: Any) -> ProbeResult:
        """The probe as a Ray task with a trial's resources, so it measures the kind of device trials use."""
        ray = import_ray()
        remote = ray.remote(with_warnings).options(
            num_cpus=self._resources.get("cpu", 1), num_gpus=self._resources.get("gpu", 0)
        )
        try:
            result, said = ray.get(remote.remote(probe, **kwargs))
        except ray.exceptions.RayTaskError as exc:  # the probe's own error, not Ray's traceback around it
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BstuneError):
                raise cause from None
            raise
        relay_warnings(said, "in the probe, on the cluster", self._warned)
        assert isinstance(result, ProbeResult)
        return result

    def keep_probe(self, probe: ProbeResult) -> None:
        self._probe = clean_json(probe.to_dict())
        self._write_state()

    def adopt(
        self,
        plan: TrialPlan,
        outcome: TrialOutcome,
        intermediate: dict[int, float],
        distributions: dict[str, Any],
    ) -> bool:
        """Kept in the study's state file; the searcher starts with it as its trial 0 (see ``_make_searcher``),
        and Tune runs one trial less."""
        import optuna
        from ray import tune

        if self._adopted is not None:
            return True  # a resumed study: kept when it first ran
        assert self._exp_dir is not None
        if tune.Tuner.can_restore(str(self._exp_dir)):
            return False  # an experiment begun without it (an older bstune): its searcher numbers trials from 0
        assert outcome.status == TrialStatus.COMPLETED and outcome.value is not None
        self._adopted = clean_json(
            {
                "params": plan.params,
                "distributions": {
                    name: optuna.distributions.distribution_to_json(d) for name, d in distributions.items()
                },
                "value": outcome.value,
                "intermediate": {str(k): v for k, v in intermediate.items()},
                "user_attrs": {**plan.attrs(), **outcome.attrs(), FROM_PROBE_ATTR: True},
            }
        )
        self._write_state()
        return True

    def run_trials(self, planner: TrialPlanner) -> list[TrialRecord]:
        ray = import_ray()
        from ray import tune

        spec, exp_dir = self._spec, self._exp_dir
        assert spec is not None and exp_dir is not None, "RayBackend: open() the study first"
        settings, resources = spec.settings, self._resources
        adopted = adopted_trial(self._adopted) if self._adopted is not None else None
        kept = [dataclasses.replace(trial_record(adopted), number=0)] if adopted is not None else []
        n_tune = settings.n_trials - len(kept)  # the probe's run is one of the study's trials
        restoring = tune.Tuner.can_restore(str(exp_dir))
        if restoring and self._tune_trials is not None and self._tune_trials != n_tune:
            raise ConfigError(
                f"the Ray study {spec.name!r} under {exp_dir.parent} was started with "
                f"{self._tune_trials + len(kept)} trials, and Ray Tune cannot change the number of trials of a "
                f"stored experiment; resume with {self._tune_trials + len(kept)} trials, or start a new study "
                "(another study_name or storage_path; the CLI's --out)",
                source="Study",
                field="n_trials",
            )
        if n_tune <= 0 and not restoring:
            return kept
        # With a search algorithm Tune keeps one trial pending at a time unless told otherwise, and a
        # trial waits pending while its worker process starts (seconds: torch is imported), so short
        # trials would run one after the other on a cluster with room for many.
        os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(_trials_at_once(ray, self.settings, resources)))
        (exp_dir / GAVE_UP_FILE).unlink(missing_ok=True)  # a resumed study decides afresh
        trainable = tune.with_resources(tune.with_parameters(train_trial, job=spec.job), resources)
        if restoring:
            logger.info("restoring the Ray Tune experiment at %s", exp_dir)
            with _quiet_tune():
                tuner = tune.Tuner.restore(
                    str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=True
                )
        else:
            self._tune_trials = n_tune
            self._write_state()
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=make_searcher(planner, spec.sampler, Direction(settings.direction), adopted, exp_dir),
                    scheduler=make_scheduler(settings),
                    num_samples=n_tune,
                    max_concurrent_trials=self.settings.max_concurrent,
                    trial_dirname_creator=_trial_dirname,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=spec.name,
                    storage_path=str(exp_dir.parent),
                    failure_config=tune.FailureConfig(max_failures=self.settings.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    verbose=1 if settings.progress else 0,
                    callbacks=[_scalar_tensorboard(), _trial_ends(settings.objective, self._warned)],
                ),
            )
        with warnings.catch_warnings(), _quiet_tune(), _lenient_metrics():
            # a restored experiment replays its trials' results to the searcher, whose Optuna trials hold them
            # already: Optuna warns once per replayed step, about nothing a user can act on
            warnings.filterwarnings("ignore", message="The reported value is ignored because this ")
            with _sigint_kept():
                grid = tuner.fit()
        results = [grid[i] for i in range(len(grid))]
        # Tune takes the first Ctrl-C itself: it snapshots the experiment and returns as if done, with the
        # running trials cut short (their last results read like a pruned trial's; see _cut_short). Raise it
        # on, as the embedded backend does, so that nothing is re-scored or reported from a half-run study
        # and the command says how to resume (``Tuner.restore`` runs the cut trials again).
        errored = {
            int(c[TRIAL_NUMBER_KEY])
            for r in results
            if r.error is not None and TRIAL_NUMBER_KEY in (c := r.config or {})
        }
        cut = _cut_short(exp_dir, errored)
        records = list(kept)
        for index in range(len(grid)):
            result = grid[index]
            if result.config is None or PLAN_KEY not in result.config:
                continue  # a trial the searcher never filled in (the study ended first)
            record = record_from_result(result.metrics or {}, result.config, result.error)
            records.append(record)
        records.sort(key=lambda r: r.number)
        # fewer trials than asked: the searcher gave up on code that fails (see give_up), or Ctrl-C
        gave_up = (exp_dir / GAVE_UP_FILE).is_file()
        if cut > 0 or (len(grid) < (self._tune_trials if self._tune_trials is not None else n_tune) and not gave_up):
            logger.warning(
                "Ray Tune stopped early (Ctrl-C): %d of %d trials finished; the experiment is kept at %s",
                len(kept) + len(grid) - cut,
                settings.n_trials,
                exp_dir,
            )
            raise KeyboardInterrupt
        cap = planner.batch_cap  # this copy stayed at the start cap: the searcher lowers its own
        for i, record in enumerate(records):  # the ceiling each out-of-memory trial left, as the searcher lowered it
            if record.status == TrialStatus.OOM and record.batch_size is not None:
                cap = max(spec.batch_min, min(cap, int(record.batch_size) // 2))
                records[i] = dataclasses.replace(record, batch_ceiling=cap)
        return records

    def run_plans(self, plans: list[TrialPlan]) -> list[TrialOutcome]:
        """Ray tasks with the trials' resources, side by side."""
        ray = import_ray()
        assert self._spec is not None
        job = self._spec.job
        remote = ray.remote(_run_plan).options(
            num_cpus=self._resources.get("cpu", 1), num_gpus=self._resources.get("gpu", 0)
        )
        return list(ray.get([remote.remote(job, plan) for plan in plans]))

    def keep_rescored(self, done: list[Rescored]) -> None:
        assert self._exp_dir is not None
        (self._exp_dir / RESCORED_FILE).write_text(json.dumps([r.to_dict() for r in done], indent=1))

    def keep_critical(self, measured: dict[str, Any]) -> None:
        assert self._exp_dir is not None
        (self._exp_dir / CRITICAL_FILE).write_text(json.dumps(clean_json(measured), indent=1))

    def _state_file(self) -> Path:
        assert self._exp_dir is not None
        return self._exp_dir / STATE_FILE

    def _write_state(self) -> None:
        """The study's state file: its settings, and what this backend holds of the probe, trial 0 and Tune."""
        assert self._spec is not None
        state: dict[str, Any] = {"settings": self._spec.fingerprint, "probe": self._probe}
        if self._adopted is not None:
            state["adopted"] = self._adopted
        if self._tune_trials is not None:
            state["tune_trials"] = self._tune_trials
        self._state_file().write_text(json.dumps(state, indent=2))


def _run_plan(job: TrialJob, plan: TrialPlan) -> TrialOutcome:
    outcome: TrialOutcome = job.run(plan)
    return outcome  # the whole budget: re-scoring runs are never stopped early
