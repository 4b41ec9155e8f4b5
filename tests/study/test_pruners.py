"""The early-stopping rules: a retried trial keeps the Hyperband bracket of the trial it runs again."""

from __future__ import annotations

import optuna

from bstune.study._liveness import retry_attrs
from bstune.study._pruners import HyperbandPruner, make_pruner


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    for step in range(1, 10):
        trial.report(x + 1.0 / step, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return x


def test_a_retried_trial_is_in_the_bracket_of_the_trial_it_runs_again() -> None:
    """A newcomer's winning config, interrupted by Ctrl-C, was pruned at the first rung on resume: the retry's
    new number put it in another bracket, where the interrupted trial's would have let it run."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = make_pruner("hyperband", n_evals=9)
    assert isinstance(pruner, HyperbandPruner)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner, study_name="s")
    study.optimize(_objective, n_trials=12)
    trials = study.get_trials(deepcopy=False)
    bracket = {t.number: pruner._get_bracket_id(study, t) for t in trials}
    assert len(set(bracket.values())) > 1  # several brackets, or the test would prove nothing
    # a trial whose bracket differs from the one the retry's own number (12) gets
    plain = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)
    plain._try_initialization(study)
    first = next(t for t in trials if bracket[t.number] != plain._get_bracket_id(study, _numbered(trials[0], 12)))
    again = retry_attrs(first.number, dict(first.user_attrs))
    study.enqueue_trial(dict(first.params), user_attrs=again)
    study.optimize(_objective, n_trials=1)
    retry = study.get_trials(deepcopy=False)[-1]
    assert retry.number == 12 and retry.user_attrs["retry_root"] == first.number
    assert pruner._get_bracket_id(study, retry) == bracket[first.number]
    # a retry of the retry: still the first trial's bracket
    assert retry_attrs(12, dict(retry.user_attrs)) == {"retry_of": 12, "retry_root": first.number}


def _numbered(trial: optuna.trial.FrozenTrial, number: int) -> optuna.trial.FrozenTrial:
    import copy

    out = copy.copy(trial)
    out.number = number
    return out
