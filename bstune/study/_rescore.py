"""Re-scoring: the best few completed trials trained again at other seeds before one is recommended.

A trial's value comes from one training seed, and one seed moves a config's validation
loss by several percent (8.6% on the digits MLP near its optimum). Picking the best of
many near-equal trials on that one draw picks the luckiest seed as much as the best
config (the winner's curse), and the more trials a search puts near the optimum, the
worse it gets. So the ``top`` best completed trials are each trained again at ``seeds``
further seeds, with the same configuration and the full budget, and the recommendation
is the one with the best mean. The samples this costs count in the study's total.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from bstune.metrics import Direction
from bstune.records import Rescored, TrialRecord, TrialStatus, last_value
from bstune.study._trial import TrialOutcome
from bstune.study._trial_plan import TrialPlan

__all__ = ["candidates", "choose", "rescore_seeds", "run_rescoring"]

# far from the study seed and from each other's neighbours: seed s of a study never
# collides with the re-scoring seeds of the studies at seeds s+1, s+2, ...
_SEED_STRIDE = 100_003


def rescore_seeds(study_seed: int, n: int) -> list[int]:
    """The training seeds of re-scoring: deterministic from the study seed, none equal to it."""
    return [study_seed + _SEED_STRIDE * (i + 1) for i in range(n)]


def candidates(trials: Sequence[TrialRecord], top: int, direction: Direction | str) -> list[TrialRecord]:
    """The ``top`` best completed trials, best first (ties: the earlier trial)."""
    sign = Direction(direction).sign
    done = [t for t in trials if t.status == TrialStatus.COMPLETED and t.value is not None and math.isfinite(t.value)]
    return sorted(done, key=lambda t: (sign * float(t.value), t.number))[:top]  # type: ignore[arg-type]


def run_rescoring(
    trials: Sequence[TrialRecord],
    seeds: list[int],
    *,
    run: Callable[[list[TrialPlan]], list[TrialOutcome]],
    objective: str,
    on_done: Callable[[int], object] | None = None,
    fixed: tuple[str, ...] = (),
) -> list[Rescored]:
    """Train each trial's configuration again at each of ``seeds``; returns their values (best over each
    run's evaluations) and their ``objective`` at each run's last evaluation.

    ``run`` trains a list of plans for their whole budget and returns their outcomes in
    order (a backend's ``run_plans``: one after the other here, side by side on Ray).
    ``on_done(n)`` is told each time ``n`` more runs have finished (a progress bar counts them); ``fixed``: what
    the space leaves one value (:attr:`~bstune.space.SearchSpace.fixed`), as the trials' plans carried it.
    """
    done = on_done or (lambda n: None)
    out = []
    for trial in trials:
        plan = TrialPlan.from_dict(
            {"params": trial.params, "config": trial.config, "temperature": trial.temperature or 0.0, "fixed": fixed}
        )
        plans = [dataclasses.replace(plan, config=dataclasses.replace(plan.config, seed=s)) for s in seeds]
        outcomes = run(plans)
        done(len(plans))
        values: list[float | None] = [trial.value]
        values += [o.value if o.status == TrialStatus.COMPLETED else None for o in outcomes]
        finals = [last_value(trial.history, objective)]
        finals += [last_value(o.history, objective) if o.status == TrialStatus.COMPLETED else None for o in outcomes]
        out.append(Rescored(trial.number, list(seeds), values, sum(o.samples for o in outcomes), finals))
    return out


def choose(rescored: Sequence[Rescored], direction: Direction | str) -> Rescored | None:
    """The candidate with the best mean over its seeds; one that failed at any seed is never chosen.

    Equal means (common for an accuracy over a small evaluation set, which takes few values) go to the better
    mean at the runs' last evaluations, what training the config to its budget gives; then to the earlier trial.
    """
    sign = Direction(direction).sign
    ok = [r for r in rescored if r.complete]

    def key(r: Rescored) -> tuple[float, float, int]:
        final = r.final_mean
        return sign * float(r.mean), sign * final if final is not None else math.inf, r.trial  # type: ignore[arg-type]

    return min(ok, key=key) if ok else None
