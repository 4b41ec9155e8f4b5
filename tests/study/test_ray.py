"""The Ray backend's pieces that need no cluster (the cluster tests are in tests/ray/)."""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from bstune._keys import SCRIPT_MODULE_PREFIX
from bstune.errors import ConfigError, DependencyError
from bstune.records import TrialStatus
from bstune.space import SearchSpace
from bstune.study import Study, make_sampler
from bstune.study._ray import RayBackend, RaySettings, _init, import_ray, make_scheduler, use_auth_token
from bstune.study._ray_cluster import _register_script_modules, _resources
from bstune.study._ray_search import PlannerSpace, adopted_trial, make_searcher
from bstune.study._ray_trial import record_from_result
from bstune.study._trial import TrialOutcome
from bstune.study._trial_plan import TrialPlanner

SPACE = {"name": "tiny", "batch_size": {"min": 8, "max": 256}, "lr": {"min": 1e-3, "max": 1.0}}


def planner() -> TrialPlanner:
    return TrialPlanner(
        space=SearchSpace.coerce(SPACE),
        mode="baseline",
        prior=None,
        batch_cap=256,
        budget_samples=9000,
        eval_every=1000,
        seed=0,
        device="cpu",
        default_momentum=0.9,
    )


def test_planner_space_ships_the_plan_the_planner_derives() -> None:
    study = optuna.create_study()
    trial = study.ask()
    config = PlannerSpace(planner())(trial)
    plan = config["bstune_plan"]
    assert config["bstune_trial_number"] == 0
    assert plan["batch_size"] == trial.params["batch_size"] and plan["lr"] == pytest.approx(trial.params["lr"])
    assert plan["temperature"] == pytest.approx(plan["lr"] / (plan["batch_size"] * (1 - 0.9)))
    assert plan["config"]["max_samples"] == 9000 and plan["config"]["eval_every_samples"] == 1000


def test_a_searcher_state_saved_before_the_search_had_its_own_module_still_loads() -> None:
    """A Ray study's saved searcher state pickles the space by its module's path: one saved when the space
    lived in ``bstune.study._ray`` resumes after it moved to ``_ray_search``."""
    import pickle

    saved = pickle.dumps(PlannerSpace(planner()), protocol=0)
    assert b"bstune.study._ray_search\nPlannerSpace" in saved
    older = saved.replace(b"bstune.study._ray_search\nPlannerSpace", b"bstune.study._ray\nPlannerSpace")
    loaded = pickle.loads(older)  # bytes this test made
    assert isinstance(loaded, PlannerSpace) and loaded.planner.space == planner().space


def _config() -> dict[str, object]:
    trial = optuna.create_study().ask()
    return PlannerSpace(planner())(trial)


def test_an_adopted_run_is_the_searchers_trial_0_kept_in_the_state_file(tmp_path: Path) -> None:
    """The probe's run, adopted, is trial 0 of the searcher (Tune's first trial is number 1) and is kept
    for a resumed study; an experiment begun before bstune adopted it (its trials numbered from 0) keeps
    the run as the probe's cost."""
    pytest.importorskip("ray.tune")
    plans = planner()
    plan = plans.plan({"batch_size": 64, "lr": 0.1})
    distributions = {
        "batch_size": optuna.distributions.IntDistribution(8, 256, log=True),
        "lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True),
    }
    outcome = TrialOutcome(TrialStatus.COMPLETED, 0.25, samples=9000, steps=141, history=[{"milestone": 9000}])
    backend = RayBackend()
    backend._spec, backend._exp_dir = SimpleNamespace(fingerprint={"seed": 0}), tmp_path  # type: ignore[assignment]
    assert backend.adopt(plan, outcome, {9: 0.25}, distributions)
    state = json.loads((tmp_path / "bstune_study.json").read_text())
    assert state["settings"] == {"seed": 0} and state["adopted"]["value"] == 0.25
    assert backend.adopt(plan, outcome, {9: 0.25}, distributions)  # once

    adopted = adopted_trial(state["adopted"])
    searcher = make_searcher(plans, optuna.samplers.RandomSampler(seed=0), "minimize", adopted)
    zero = searcher._ot_study.trials[0]
    assert (zero.number, zero.value, zero.params, zero.intermediate_values) == (0, 0.25, plan.params, {9: 0.25})
    assert zero.user_attrs["from_probe"] is True and zero.user_attrs["batch_size"] == 64
    assert searcher.suggest("first")["bstune_trial_number"] == 1

    older = RayBackend()
    older._spec, older._exp_dir = SimpleNamespace(fingerprint={}), tmp_path / "older"  # type: ignore[assignment]
    older._exp_dir.mkdir()
    (older._exp_dir / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    assert not older.adopt(plan, outcome, {9: 0.25}, distributions)
    assert not (older._exp_dir / "bstune_study.json").exists()


def test_resuming_a_ray_study_with_another_number_of_trials_says_so(tmp_path: Path) -> None:
    """Tune cannot change the trials of a stored experiment: it ran its own number, and bstune read the
    missing ones as a Ctrl-C and asked for the same resume again, for ever."""
    pytest.importorskip("ray.tune")
    backend = RayBackend()
    settings = SimpleNamespace(n_trials=6)
    backend._spec = SimpleNamespace(fingerprint={}, settings=settings, name="bstune-x")  # type: ignore[assignment]
    backend._exp_dir, backend._tune_trials = tmp_path / "bstune-x", 3
    backend._exp_dir.mkdir()
    (backend._exp_dir / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    with pytest.raises(ConfigError, match=r"n_trials: .* was started with 3 trials, .* resume with 3 trials"):
        backend.run_trials(planner())


def test_an_address_where_nothing_listens_is_a_clear_error_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray retries such an address for minutes, warning each time; the newcomer saw no error of bstune's.
    The same where RAY_ADDRESS gives it (a newcomer's run hung for minutes on a stopped cluster's)."""
    ray = pytest.importorskip("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        started = time.monotonic()
        with pytest.raises(ConfigError, match=rf"address: cannot connect .* nothing answers at 127.0.0.1:{port}"):
            _init(ray, RaySettings(address=address))
        assert time.monotonic() - started < 10 and not ray.is_initialized()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(
        ConfigError, match=rf"nothing answers at 127.0.0.1:{port} \(.*\) \(the address RAY_ADDRESS gives\)"
    ):
        _init(ray, RaySettings())
    assert not ray.is_initialized()


def test_resources_the_cluster_lacks_are_said_before_everything_waits(caplog: pytest.LogCaptureFixture) -> None:
    """--resources gpu=1 on a CPU cluster: the probe's task waited for a GPU that never came, with no output."""
    cluster = SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0, "memory": 8e9})
    with caplog.at_level("WARNING", logger="bstune.study._ray"):
        assert _resources(cluster, RaySettings(resources_per_trial={"cpu": 1, "gpu": 1})) == {"cpu": 1, "gpu": 1}
        assert _resources(cluster, RaySettings(resources_per_trial={"cpu": 2, "memory": 1e9})) == {
            "cpu": 2,
            "memory": 1e9,
        }
    (said,) = [r.getMessage() for r in caplog.records]
    assert (
        "each trial asks for cpu=1, gpu=1, and the whole cluster has gpu=0 now" in said and "lower --resources" in said
    )


def test_a_running_clusters_token_is_sent_where_the_user_has_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ray start`` (Ray 2.60) turns token authentication on where ~/.ray/auth_token exists, but
    ``ray.init(address=...)`` sends the token only with RAY_AUTH_MODE=token, read when Ray is imported:
    the README's local cluster refused a newcomer's driver, "Authentication token is missing"."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    use_auth_token("127.0.0.2:6380")
    assert "RAY_AUTH_MODE" not in os.environ  # no token: nothing to send
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("x" * 64)
    use_auth_token(None)
    assert "RAY_AUTH_MODE" not in os.environ  # a local instance: Ray sets it up itself
    use_auth_token("local")
    assert "RAY_AUTH_MODE" not in os.environ  # always a new local instance
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.2:6380")  # no address, but ray.init joins the one Ray is told
    use_auth_token(None)
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.delenv("RAY_AUTH_MODE")
    use_auth_token("127.0.0.2:6380")
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    use_auth_token("127.0.0.2:6380")
    assert os.environ["RAY_AUTH_MODE"] == "disabled"  # the user's choice
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace())
    use_auth_token("127.0.0.2:6380")
    assert "RAY_AUTH_MODE" not in os.environ  # Ray read it already: too late, the error says what to set


def test_a_scripts_cached_function_reaches_workers_that_cannot_import_the_script(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """examples/own_loop.py loads its data through a functools.cache function: cloudpickle shipped the
    wrapper by reference to the script's module, and every Ray trial failed "No module named 'bstune_user_...'".
    Unpickled here with the module gone (as in a worker), the loop runs, its helper cached again."""
    import pickle
    import types
    from collections import ChainMap

    cloudpickle = pytest.importorskip("ray.cloudpickle")
    table = cloudpickle.Pickler.dispatch_table  # what _register_script_modules adds to: this test's own copy
    monkeypatch.setattr(cloudpickle.Pickler, "dispatch_table", ChainMap({}, *table.maps))
    name = f"{SCRIPT_MODULE_PREFIX}test"
    script = types.ModuleType(name)
    exec(  # a user's script, as bstune._loading imports it
        "import functools\n"
        "@functools.lru_cache(maxsize=4)\n"
        "def data():\n    return [1, 2, 3]\n"
        "def train():\n    return sum(data()) + data.cache_info().maxsize + Data().total(1)\n"
        "class Data:\n    @functools.lru_cache(maxsize=2)\n    def total(self, n):\n        return n\n",
        script.__dict__,
    )
    monkeypatch.setitem(sys.modules, name, script)
    _register_script_modules()
    try:
        shipped = cloudpickle.dumps(script.train)
        plain = cloudpickle.dumps(fnmatch._compile_pattern)  # a cached function of an importable module
        assert pickle.loads(pickle.dumps(script.data)) is script.data  # the standard pickler: by reference still
    finally:
        cloudpickle.unregister_pickle_by_value(script)
    monkeypatch.delitem(sys.modules, name)
    train = pickle.loads(shipped)
    assert train() == train() == 11 and train.__globals__["data"].cache_info().hits == 1  # cached again, as set
    assert pickle.loads(plain) is fnmatch._compile_pattern  # by reference, as before
    # Ray Client's server unpickles the function and pickles it again, without bstune's reducer: that failed,
    # "Can't pickle <functools._lru_cache_wrapper ...>: import of module 'bstune_user_test' failed"
    monkeypatch.setattr(cloudpickle.Pickler, "dispatch_table", ChainMap({}, *table.maps))
    again = pickle.loads(cloudpickle.dumps(train))
    assert again() == 11 and again.__globals__["data"].cache_info().maxsize == 4  # a cached method binds too


def test_a_scripts_modules_beside_it_are_shipped_by_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A script that imports a module beside it (``from my_data import blobs``) runs on the driver, whose
    ``sys.path`` holds the script's folder; a worker on another node has neither. The module's functions,
    cached ones too, travel by value; installed packages stay by reference."""
    import pickle

    from bstune._loading import load_subject
    from bstune.study import _ray_cluster

    cloudpickle = pytest.importorskip("ray.cloudpickle")
    table = cloudpickle.Pickler.dispatch_table  # what _register_script_modules adds to: this test's own copy
    monkeypatch.setattr(cloudpickle.Pickler, "dispatch_table", collections.ChainMap({}, *table.maps))
    monkeypatch.setattr(_ray_cluster, "_BY_VALUE", set())
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "my_data_beside.py").write_text(
        "import functools\n@functools.cache\ndef blobs():\n    return [1, 2, 3]\ndef scale(x):\n    return 2 * x\n"
    )
    (tmp_path / "my_loop.py").write_text(
        "import optuna\nfrom my_data_beside import blobs, scale\n\n"
        "def train(ctx):\n    return scale(sum(blobs())), optuna.__name__\n"
    )
    train = load_subject(tmp_path / "my_loop.py")
    helper = sys.modules["my_data_beside"]
    script = sys.modules[train.__module__]
    try:
        found = {m.__name__ for m in _ray_cluster._script_modules()}  # other tests' scripts may be loaded too
        assert {script.__name__, "my_data_beside"} <= found and not {"optuna", "bstune", "torch"} & found
        # an interpreter living under a script's folder (a pyenv under ~ with ~/train.py): its standard library
        # is not the script's, though its files lie under that folder
        monkeypatch.setattr(json, "__file__", str(tmp_path / ".pyenv" / "lib" / "json" / "__init__.py"))
        assert "json" not in {m.__name__ for m in _ray_cluster._script_modules()}
        _register_script_modules()
        shipped = cloudpickle.dumps(train)
    finally:
        for module in (script, helper):
            cloudpickle.unregister_pickle_by_value(module)
    for name in (script.__name__, "my_data_beside"):  # as on a worker of another node
        monkeypatch.delitem(sys.modules, name)
    sys.path.remove(str(tmp_path.resolve()))
    assert pickle.loads(shipped)(None) == (12, "optuna")


def test_records_from_ray_results_keep_outcome_and_learning_curve() -> None:
    config = _config()
    history = [{"milestone": 1000, "val_loss": 0.5}, {"milestone": 2000, "val_loss": 0.4}]
    final = {"final": True, "status": "completed", "objective": 0.4, "samples_seen": 9000, "history": history,
             "message": "", "node": "n1"}  # fmt: skip
    done = record_from_result(final, config, None)
    assert (done.status, done.value, done.samples, done.worker, done.history) == ("completed", 0.4, 9000, "n1", history)
    stopped = record_from_result({"samples": 3000, "samples_seen": 3010, "objective": 0.9}, config, None)
    assert (stopped.status, stopped.value, stopped.samples) == ("pruned", 0.9, 3010)
    assert stopped.message == "stopped by Ray Tune at milestone 3000 (its scheduler, or the run's end)"  # was ''

    crashed = record_from_result({"samples": 1000}, config, RuntimeError("node died"))
    assert crashed.status == "failed" and "node died" in crashed.message
    diverged = record_from_result({"final": True, "status": "diverged", "message": "loss nan"}, config, None)
    assert diverged.status == "diverged" and diverged.value is None
    too_big = {"final": True, "status": "failed", "message": "BatchLargerThanDataError: ...", "n_train": 40}
    assert record_from_result(too_big, config, None).n_train == 40 and done.n_train is None
    unread = record_from_result(final | {"unread_params": ["model.hiden"]}, config, None)  # as the trial reports it
    assert unread.unread_params == ["model.hiden"] and done.unread_params == []


def test_searcher_learns_from_out_of_memory_and_fails_broken_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray.tune")
    from bstune.study._ray_search import make_searcher

    studies: list[optuna.Study] = []  # the study OptunaSearch creates, seen through Optuna's own entry point
    create_study = optuna.study.create_study

    def recording(*args: object, **kwargs: object) -> optuna.Study:
        studies.append(create_study(*args, **kwargs))  # type: ignore[arg-type]
        return studies[-1]

    monkeypatch.setattr(optuna.study, "create_study", recording)
    plans = planner()
    search = make_searcher(plans, make_sampler(0, 8), direction="minimize")
    batch = search.suggest("t1")["bstune_plan"]["batch_size"]
    search.on_trial_complete("t1", {"status": "oom", "batch_size": batch})
    cap = max(8, min(256, batch // 2))
    assert plans.batch_cap == cap
    assert all(search.suggest(f"t{i}")["bstune_plan"]["batch_size"] <= cap for i in range(2, 6))  # drawn under it
    (study,) = studies
    assert study.get_trials()[0].state == optuna.trial.TrialState.FAIL  # TPE learns nothing from an OOM trial


def test_searcher_caps_batch_sizes_at_a_training_functions_training_set() -> None:
    pytest.importorskip("ray.tune")
    from bstune.study._ray_search import make_searcher

    plans = planner()
    search = make_searcher(plans, make_sampler(0, 8), direction="minimize")
    search.suggest("t1")
    search.on_trial_complete("t1", {"status": "failed", "n_train": 40})  # the loop's ctx.loader held 40 examples
    assert plans.batch_cap == 40
    assert all(search.suggest(f"t{i}")["bstune_plan"]["batch_size"] <= 40 for i in range(2, 8))
    search.on_trial_complete("t2", {"status": "completed", "objective": 0.5, "n_train": 4})  # below batch_min (8):
    assert plans.batch_cap == 40  # every trial fails and says why; the searcher keeps its range


def test_searcher_gives_up_on_code_that_fails_and_a_restored_one_starts_anew(tmp_path: Path) -> None:
    """Three failed trials and none completed, or one that every trial would repeat: Tune is told the search is
    finished, rather than every trial failing the same way; pruned trials and completed ones mean the code runs."""
    pytest.importorskip("ray.tune")
    failed = {"final": True, "status": "failed", "message": "RuntimeError: shapes"}

    def searcher() -> object:
        search = make_searcher(planner(), make_sampler(0, 8), direction="minimize")
        search.set_search_properties("objective", "min", {})
        return search

    search = searcher()
    for i in range(3):
        assert search.suggest(f"t{i}") not in (None, search.FINISHED)
        search.on_trial_result(f"t{i}", failed)  # no objective: OptunaSearch raised KeyError, ending the study
        search.on_trial_complete(f"t{i}", failed)
    assert search.suggest("t3") == search.FINISHED
    search.save(str(tmp_path / "searcher.pkl"))
    restored = searcher()
    restored.restore(str(tmp_path / "searcher.pkl"))  # resumed after a fix: this run's failures count anew
    assert restored.suggest("t4") not in (None, search.FINISHED)

    silent = searcher()  # a training function that never reported: every trial would, so one is enough
    silent.suggest("t0")
    silent.on_trial_complete("t0", failed | {"message": "recorded no evaluation", "systematic": True})
    assert silent.suggest("t1") == silent.FINISHED

    working = searcher()  # one pruned trial: the code reports, so failures are the configs'
    working.suggest("t0")
    working.on_trial_complete("t0", {"samples": 1000, "objective": 0.9})
    for i in range(1, 5):
        working.suggest(f"t{i}")
        working.on_trial_complete(f"t{i}", failed)
    assert working.suggest("t5") not in (None, working.FINISHED)


def test_ray_settings_reject_bad_values() -> None:
    with pytest.raises(ConfigError, match="resources_per_trial: unknown resources"):
        RaySettings(resources_per_trial={"tpu": 1})
    with pytest.raises(ConfigError, match=r"resources_per_trial\.gpu: must be a non-negative number"):
        RaySettings(resources_per_trial={"gpu": -1})
    with pytest.raises(ConfigError, match="max_concurrent"):
        RaySettings(max_concurrent=0)


def test_study_keeps_backend_settings_apart(blob_task: object) -> None:
    with pytest.raises(ConfigError, match="storage: the Ray backend keeps its results under storage_path"):
        Study(blob_task, SPACE, backend="ray", storage="sqlite:///x.db")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ray= holds the settings of backend='ray'"):
        Study(blob_task, SPACE, ray=RaySettings(address="auto"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="address: no such setting"):
        Study(blob_task, SPACE, address="auto")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="backend: must be"):
        Study(blob_task, SPACE, backend="dask")  # type: ignore[arg-type]


class _Trial:
    """What a Ray scheduler reads of a trial: its id and status."""

    def __init__(self, trial_id: str, status: str = "RUNNING") -> None:
        self.trial_id, self.status = trial_id, status


class _Controller:
    """What a Ray scheduler asks of the tune controller: the live trials."""

    def __init__(self, *live: _Trial) -> None:
        self.live = list(live)

    def get_live_trials(self) -> list[_Trial]:
        return self.live


def _decide(scheduler: object, controller: _Controller, trial: _Trial, samples: int, objective: float) -> str:
    return scheduler.on_trial_result(controller, trial, {"samples": samples, "objective": objective})  # type: ignore[attr-defined,no-any-return]


def test_pruner_names_pick_ray_schedulers_on_training_samples(blob_task: object) -> None:
    schedulers = pytest.importorskip("ray.tune.schedulers")
    go, stop = schedulers.TrialScheduler.CONTINUE, schedulers.TrialScheduler.STOP
    study = Study(blob_task, SPACE, backend="ray", budget_samples=9000, n_evals=9)  # type: ignore[arg-type]

    asha = make_scheduler(study.settings)
    assert isinstance(asha, schedulers.AsyncHyperBandScheduler)
    assert asha.metric == "objective"  # lower is better: the trials stopped below report more
    good, mid, bad, late = (_Trial(n) for n in ("good", "mid", "bad", "late"))
    controller = _Controller(*(good, mid, bad, late), *(_Trial(f"x{i}") for i in range(3)))
    for t in controller.live:
        asha.on_trial_add(controller, t)
    for samples in (1000, 3000):  # three trials set each rung's cutoff, best last so none is stopped
        assert [_decide(asha, controller, _Trial(f"x{i}"), samples, 0.3 - 0.1 * i) for i in range(3)] == [go] * 3
    assert _decide(asha, controller, bad, 999, 9.0) == go  # before the first rung (the first milestone)
    assert _decide(asha, controller, bad, 1000, 9.0) == stop  # compared at 1000 samples, whatever its steps
    assert asha.on_trial_result(controller, late, {"training_iteration": 1000, "objective": 9.0}) == go  # not time
    assert _decide(asha, controller, mid, 1000, 0.05) == go
    assert _decide(asha, controller, mid, 2000, 9.0) == go  # no rung at 2000
    assert _decide(asha, controller, mid, 3000, 9.0) == stop  # the next rung: 1000 x 3
    rungs = re.findall(r"Iter ([0-9.]+):", asha.debug_string())
    assert sorted(float(r) for r in rungs) == [1000, 3000, 9000]  # Hyperband's rungs

    median = make_scheduler(dataclasses.replace(study.settings, pruner="median"))
    assert isinstance(median, schedulers.MedianStoppingRule)
    assert median.metric == "objective"
    others = [_Trial(f"o{i}") for i in range(5)]
    slow, pending = _Trial("slow"), _Trial("pending", "PENDING")
    controller = _Controller(*others, slow, pending)
    for t in controller.live:
        median.on_trial_add(controller, t)
    # too few trials to compare with and one waiting: a function trainable paused without a
    # checkpoint would start over, so the rule goes on instead of pausing
    assert [_decide(median, controller, slow, s, 0.5) for s in (1000, 2000)] == [go, go]
    for t in others:
        assert _decide(median, controller, t, 1000, 0.1) in (go, stop)
        assert _decide(median, controller, t, 4000, 0.1) in (go, stop)
    lagging = _Trial("lagging")
    median.on_trial_add(controller, lagging)
    assert _decide(median, controller, lagging, 999, 9.0) == go  # within the grace period
    assert _decide(median, controller, lagging, 1000, 9.0) == stop  # worse than the others' median at 1000 samples

    assert type(make_scheduler(dataclasses.replace(study.settings, pruner="none"))) is schedulers.FIFOScheduler
    with pytest.raises(ConfigError, match="pruner: the Ray backend takes a pruner by name"):
        Study(blob_task, SPACE, backend="ray", pruner=optuna.pruners.MedianPruner())  # type: ignore[arg-type]


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(DependencyError, match=r"pip install 'bstune\[ray\]'"):
        import_ray()
