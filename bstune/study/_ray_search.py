"""The Ray backend's search, run on the driver: Ray's ``OptunaSearch`` with bstune's define-by-run
space (:class:`PlannerSpace`), told what each trial's outcome means (:func:`make_searcher`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bstune._keys import PLAN_KEY, TRIAL_NUMBER_KEY
from bstune.records import TrialStatus
from bstune.study._trial import SYSTEMATIC_ATTR, give_up
from bstune.study._trial_plan import TrialPlanner

__all__ = ["GAVE_UP_FILE", "PlannerSpace", "adopted_trial", "make_searcher"]

logger = logging.getLogger("bstune.study._ray")  # the name users' log filters already know


# -- the search space, evaluated on the driver ------------------------------------------
class PlannerSpace:
    """Ray's define-by-run space: draw the coordinates, ship the derived plan in the config.

    Plain data only (the planner): Ray pickles it with the searcher's state.
    """

    def __init__(self, planner: TrialPlanner) -> None:
        self.planner = planner

    def __call__(self, trial: Any) -> dict[str, Any]:
        plan = self.planner.plan(self.planner.sample(trial))
        return {PLAN_KEY: plan.to_dict(), TRIAL_NUMBER_KEY: int(trial.number)}


GAVE_UP_FILE = "bstune_gave_up.txt"  # in the experiment's folder: the searcher's reason for ending the study


def make_searcher(
    planner: TrialPlanner, sampler: Any, direction: str, adopted: Any = None, exp_dir: Path | None = None
) -> Any:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class BstuneSearch(OptunaSearch):  # type: ignore[misc]
        """OptunaSearch that tells TPE what a trial's outcome means.

        Diverged, out-of-memory and raising trials are failures (TPE learns nothing from
        them); trials stopped by ASHA are pruned; an out-of-memory trial lowers the batch
        cap of the trials drawn after it, and a training function's training set caps it
        at its size. ``adopted`` (an Optuna ``FrozenTrial``: the probe's trial-long run) is
        the searcher's trial 0, finished before Tune asks for the first (OptunaSearch's own
        ``evaluated_rewards`` refuses a define-by-run space).
        """

        # this run's finished trials, (status, systematic) in order, and whether it gave up (see give_up); a
        # restored experiment starts them anew: the code may have been fixed since
        finished: list[tuple[TrialStatus, bool]]
        gave_up = False

        def _setup_study(self, mode: Any) -> None:
            super()._setup_study(mode)
            self.finished = []
            study: Any = self._ot_study
            if adopted is not None and not study.get_trials(deepcopy=False):
                study.add_trial(adopted)

        def restore(self, checkpoint_path: str) -> None:
            super().restore(checkpoint_path)
            self.finished, self.gave_up = [], False

        def suggest(self, trial_id: str) -> Any:
            if self.gave_up:
                return self.FINISHED
            return super().suggest(trial_id)

        def _give_up(self) -> None:
            study: Any = self._ot_study
            completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            reason = give_up(self.finished, any_completed=bool(completed))
            if reason is not None and not self.gave_up:
                logger.warning("the study stops drawing trials: %s", reason)
                self.gave_up = True
                if exp_dir is not None:  # the driver reads it after fit: no Ctrl-C, though fewer trials ran
                    (exp_dir / GAVE_UP_FILE).write_text(reason + "\n")

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            if self.metric in result:  # a failed, diverged or out-of-memory trial's last result has no value
                super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            self._on_trial_complete(trial_id, result, error)
            stored = (result or {}).get("status") if (result or {}).get("final") else None
            if stored is not None or error:  # pruned trials end without a final result
                status = TrialStatus(stored) if stored is not None else TrialStatus.FAILED
                self.finished.append((status, bool((result or {}).get(SYSTEMATIC_ATTR))))
            else:
                self.finished.append((TrialStatus.PRUNED, False))
            self._give_up()

        def _on_trial_complete(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
            status = (result or {}).get("status")
            n_train = (result or {}).get("n_train")
            if isinstance(n_train, int) and isinstance(self._space, PlannerSpace):
                planner = self._space.planner
                if (
                    planner.space.batch_min <= n_train < planner.batch_cap
                ):  # below batch_min every trial fails, and says why
                    logger.warning(
                        "the training set has %d examples; batch sizes now capped at %d",
                        n_train,
                        planner.learn_data_size(n_train),
                    )
            if status == TrialStatus.OOM and isinstance(self._space, PlannerSpace):
                cap = self._space.planner.learn_oom(int(result["batch_size"]))  # type: ignore[index]
                logger.warning(
                    "a trial ran out of memory at batch_size=%s; batch sizes now capped at %d",
                    result["batch_size"],  # type: ignore[index]
                    cap,
                )
            if status == TrialStatus.COMPLETED:
                super().on_trial_complete(trial_id, result, error)
            elif status is None and not error:  # stopped by the scheduler before finishing
                super().on_trial_complete(trial_id, None, False)
            else:
                super().on_trial_complete(trial_id, None, True)

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return BstuneSearch(
        space=PlannerSpace(planner),
        metric="objective",
        mode="min" if direction == "minimize" else "max",
        sampler=planner.sampler(sampler),
    )


def adopted_trial(state: Mapping[str, Any]) -> Any:
    """The Optuna trial :meth:`RayBackend.adopt` kept in the study's state file (plain JSON)."""
    import optuna

    return optuna.trial.create_trial(
        params=state["params"],
        distributions={
            name: optuna.distributions.json_to_distribution(d) for name, d in state["distributions"].items()
        },
        value=state["value"],
        intermediate_values={int(k): v for k, v in state["intermediate"].items()},
        user_attrs=state["user_attrs"],
    )
