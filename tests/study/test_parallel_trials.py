"""Several trials at once on the embedded backend: worker processes on one storage (issue 16 part 4).

Every study here runs for real with 2 CPU worker processes (spawned: each imports torch
and bstune, seconds on a busy machine), on tiny problems. Out of memory is simulated as
in tests/reliability/test_bad_trials.py: a model that raises ``torch.OutOfMemoryError``
above a batch size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

import bstune
from bstune._keys import OWNER_KEY
from bstune.errors import ConfigError
from bstune.study import open_storage
from bstune.study._liveness import count_finished
from bstune.study._settings import StudySettings
from bstune.study._trial_plan import TrialPlan
from bstune.study._workers import DroppedInterrupts, TrialGate, worker_devices
from tests.conftest import make_classification, small_mlp
from tests.reliability.conftest import python_env, wait_for
from tests.reliability.test_crash_and_concurrency import in_trial
from tests.study.study_runner import SPACE, make_task

MEMORY_LIMIT = 40  # the simulated device holds batches up to this size


class SmallMemory(torch.nn.Module):
    """A model whose simulated device runs out of memory above MEMORY_LIMIT examples."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > MEMORY_LIMIT:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} examples")
        out: torch.Tensor = self.net(x)
        return out


class Slow(torch.nn.Module):
    """small_mlp, 20 ms a forward pass: a trial lasts seconds, long enough to be killed in."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.02)
        out: torch.Tensor = self.net(x)
        return out


def blobs(model: Any) -> bstune.Task:
    x, y = make_classification(n=520)
    return bstune.Task(
        model=model,
        train_data=(x[:400], y[:400]),
        val_data=(x[400:], y[400:]),
        loss=torch.nn.CrossEntropyLoss(),
        name="blobs",
    )


def study(task: bstune.Task, storage: str | None, **changes: Any) -> bstune.Study:
    settings: dict[str, Any] = {
        "n_trials": 6,
        "budget_samples": 600,
        "n_evals": 2,
        "mode": "baseline",
        "pruner": "none",
        "rescore_top": 0,
        "progress": False,
        "device": "cpu",
        "parallel_trials": 2,
    }
    return bstune.Study(task, SPACE, storage=storage, **(settings | changes))


def stored(s: bstune.Study) -> list[FrozenTrial]:
    return optuna.load_study(study_name=s.study_name, storage=s.backend.storage).get_trials()  # type: ignore[attr-defined]


WORKERS = {"worker 0 (cpu)", "worker 1 (cpu)"}


# -- settings: fast ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"parallel_trials": 0}, "parallel_trials", "must be a positive integer, got 0"),
        ({"parallel_trials": True}, "parallel_trials", "must be a positive integer, got True"),
        ({"devices": ["cpu", "cpu"]}, "devices", "'cpu' is listed twice"),
        ({"devices": "cpu"}, "devices", "must be 'all' or a non-empty list"),
        ({"devices": []}, "devices", "must be 'all' or a non-empty list"),
        ({"devices": ["gpu0"]}, "devices", "'gpu0' is not a torch device"),
        ({"devices": ["cpu"], "parallel_trials": 2}, "parallel_trials", "one trial per device, 1 at once \\(cpu\\)"),
    ],
)
def test_bad_parallel_settings_name_their_field(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as err:
        StudySettings(**changes)
    assert err.value.field == field


@pytest.mark.skipif(torch.cuda.is_available(), reason="'all' is refused only on a machine without GPUs")
def test_all_devices_without_a_gpu_points_at_parallel_trials() -> None:
    with pytest.raises(ConfigError, match=r"torch sees none on this machine.*parallel_trials") as err:
        StudySettings(devices="all")
    assert err.value.field == "devices"


def test_parallel_trials_are_the_embedded_backends_and_need_a_storage_workers_can_open() -> None:
    with pytest.raises(ConfigError, match="embedded backend's") as err:
        study(make_task(), None, backend="ray")
    assert err.value.field == "parallel_trials"
    with pytest.raises(ConfigError, match="cannot open this storage \\(in memory\\)") as err:
        study(make_task(), optuna.storages.InMemoryStorage())  # type: ignore[arg-type]
    assert err.value.field == "parallel_trials"


def test_each_worker_gets_its_device_and_the_probe_the_first() -> None:
    settings = StudySettings(devices=["cpu"])
    assert (settings.workers, settings.main_device, worker_devices(settings)) == (1, "cpu", [("cpu",)])
    assert worker_devices(StudySettings(parallel_trials=3, device="cpu")) == [("cpu",)] * 3
    assert StudySettings().workers == 1  # the default: trials in this process, as before
    # settings changed later (Study(settings=..., devices=...)) are checked as given, not against derived values
    assert StudySettings.build(StudySettings(n_trials=5), devices=["cpu"]).workers == 1
    assert StudySettings.build(StudySettings(parallel_trials=2), n_trials=5).workers == 2


def test_the_gate_of_a_worker_that_died_holding_it_is_freed_and_patience_ends_a_wait() -> None:
    import multiprocessing

    gate = TrialGate(multiprocessing.get_context("spawn"), patience=0.2)
    assert gate.take(0)
    gate.free_for(1)  # worker 1 died: it did not hold the gate, which stays taken
    started = time.monotonic()
    assert not gate.take(1) and time.monotonic() - started >= 0.2  # waits no longer than its patience
    gate.free_for(0)  # worker 0 died holding it
    assert gate.take(1)
    gate.let_go()


def test_a_ctrl_c_python_drops_in_a_gc_callback_is_not_printed_and_is_raised_again(
    capfd: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy's weak-reference callbacks are where a worker's SIGINT landed in CI: Python printed
    "Exception ignored in ..." with a traceback, and the interrupt was lost."""
    import weakref

    class Thing:
        pass

    def interrupted(_: Any) -> None:
        raise KeyboardInterrupt

    def broken(_: Any) -> None:
        raise RuntimeError("a real bug in a callback")

    before: list[type[BaseException] | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: before.append(u.exc_type))
    with DroppedInterrupts() as dropped:
        thing = Thing()
        ref = weakref.ref(thing, interrupted)
        del thing  # the callback runs now, and its KeyboardInterrupt cannot leave it
        assert ref() is None and dropped.count == 1
        with pytest.raises(KeyboardInterrupt):
            dropped.raise_again()
        dropped.raise_again()  # raised once
        thing = Thing()
        ref = weakref.ref(thing, broken)
        del thing  # anything else goes to the hook that was there before
        assert before == [RuntimeError]
    assert capfd.readouterr().err == ""
    thing = Thing()
    ref = weakref.ref(thing, interrupted)
    del thing  # outside the block: the hook before it has it back
    assert before == [RuntimeError, KeyboardInterrupt] and dropped.count == 0


def test_the_parent_says_each_trial_its_workers_finish_once_and_not_an_abandoned_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from bstune.study import _workers
    from bstune.study._liveness import finished_trials

    study = optuna.create_study()
    lr = {"lr": FloatDistribution(1e-3, 1.0)}

    def add(state: TrialState, **attrs: Any) -> None:
        value = 0.5 if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(state=state, value=value, params={"lr": 0.1}, distributions=lr, user_attrs=attrs))

    add(TrialState.COMPLETE, status="completed", samples=640, batch_size=16, lr=0.1)  # before this run: said then
    said = {0}
    add(TrialState.COMPLETE, status="completed", samples=640, batch_size=32, lr=0.2)
    add(TrialState.FAIL, status="interrupted", samples=100, message="abandoned: its config runs again")
    add(TrialState.RUNNING)
    with caplog.at_level("INFO", logger="bstune.trials"):
        _workers._say_finished(finished_trials(study), "val_loss", said)
        _workers._say_finished(finished_trials(study), "val_loss", said)  # nothing new: nothing said
    said_now = [r.getMessage() for r in caplog.records if r.name == "bstune.trials"]
    assert said_now == ["trial 1 completed: B=32, lr=0.2, val_loss=0.5, 640 samples"]


# -- real studies on 2 worker processes: slow ---------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("where", ["sqlite", "memory"])
def test_two_workers_finish_exactly_n_trials_with_different_configs(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage = f"sqlite:///{tmp_path}/s.db" if where == "sqlite" else None
    s = study(make_task(), storage, rescore_top=1, rescore_seeds=2)
    with caplog.at_level("INFO", logger="bstune.trials"):  # as `bstune run` off a terminal asks
        result = s.run()
    trials = result.trials
    assert len(trials) == 6 and all(t.status == "completed" for t in trials)  # exactly n_trials, none extra
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C's flag while waiting, undone
    # the parent says each trial the workers finished, once (a worker's own lines would come from its process)
    said = sorted(r.getMessage() for r in caplog.records if r.name == "bstune.trials")
    assert [line.split(":")[0] for line in said] == sorted(f"trial {t.number} completed" for t in trials), said
    assert {t.worker for t in trials} == WORKERS  # both ran trials, and each trial says which ran it
    assert all(t.config["device"] == "cpu" for t in trials)
    drawn = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(drawn)) == len(drawn), drawn  # the workers' samplers differ: no config drawn twice
    assert count_finished(result.optuna_study) == 6
    # the re-scoring ran in worker processes, and trains exactly as in this process
    (rescored,) = result.rescored
    best = next(t for t in trials if t.number == rescored.trial)
    plan = TrialPlan.from_dict({"params": best.params, "config": best.config, "temperature": best.temperature or 0.0})
    for seed, value in zip(rescored.seeds, rescored.values[1:], strict=True):
        here = s._job().run(dataclasses.replace(plan, config=dataclasses.replace(plan.config, seed=seed)))
        assert here.value == pytest.approx(value, rel=1e-6)


@pytest.mark.slow
def test_a_resume_on_two_workers_runs_again_a_trial_given_up_while_it_waited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk left a trial running that named no owner; the two-worker resume counted it as a peer's, waited
    for it to be given up, and ended with 4 trials complete of 5: it never ran that trial's retry."""
    storage = f"sqlite:///{tmp_path}/s.db"
    study(make_task(), storage, n_trials=3, parallel_trials=1).run()
    left = optuna.load_study(study_name=study(make_task(), storage).study_name, storage=storage).ask()
    monkeypatch.setattr("bstune.study._liveness.OWNERLESS_S", 3.0)  # three minutes, shortened, here
    result = study(make_task(), storage, n_trials=4).run()  # its workers find 3 done and one running: 4 taken
    trials = {t.number: t for t in result.optuna_study.trials}  # type: ignore[union-attr]
    assert trials[left.number].state == TrialState.FAIL
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 4
    assert count_finished(result.optuna_study) == 4


@pytest.mark.slow
def test_a_prior_study_on_two_workers_draws_from_the_prior_in_each_and_keeps_the_probes_run(tmp_path: Path) -> None:
    """Each worker wraps its sampler in the prior's draws (chosen by trial number alone, so the workers agree);
    the probe's run, recorded before the workers start, is trial 0 of the n_trials."""
    from bstune.study import ProbeSettings

    quick = ProbeSettings(lr_steps=12, measure_samples=2000, throughput_steps=2, throughput_batches=(8, 64))
    s = study(make_task(), f"sqlite:///{tmp_path}/s.db", mode="prior", probe=quick, n_trials=5)
    result = s.run()
    prior, trials = result.prior, result.trials
    assert prior is not None and len(trials) == 5 and all(t.status == "completed" for t in trials)
    assert trials[0].from_probe and trials[0].worker is None and {t.worker for t in trials[1:]} == WORKERS
    drawn = [t for t in trials[1:] if prior.from_prior(t.number, 0)]
    assert drawn and all(
        prior.draw(t.number, 0) == {k: t.params[k] for k in ("batch_coord", "lr_coord")} for t in drawn
    )


@pytest.mark.slow
def test_an_out_of_memory_ceiling_learned_in_one_worker_caps_the_other(tmp_path: Path) -> None:
    space = SPACE | {"batch_size": {"min": 16, "max": 128}}
    s = bstune.Study(
        blobs(SmallMemory),
        space,
        storage=f"sqlite:///{tmp_path}/s.db",
        n_trials=16,  # enough after the first out-of-memory trial for the other worker to start one (10: not always)
        budget_samples=800,
        n_evals=2,
        mode="baseline",
        pruner="none",
        rescore_top=0,
        progress=False,
        device="cpu",
        parallel_trials=2,
    )
    s.run()
    trials = stored(s)
    ooms = [t for t in trials if t.user_attrs.get("status") == "oom"]
    assert ooms, "no trial ran out of memory: the test shows nothing"
    crossed = 0
    for oom in ooms:
        assert oom.datetime_complete is not None
        ceiling, learned = oom.user_attrs["batch_ceiling"], oom.datetime_complete.timestamp()
        for t in trials:
            assert t.datetime_start is not None
            if t.datetime_start.timestamp() > learned + 0.5:  # started after the ceiling was stored
                assert t.user_attrs["batch_size"] <= ceiling, (oom.number, t.number)
                crossed += t.user_attrs["worker"] != oom.user_attrs["worker"]
    assert crossed, "no trial of the other worker started after an out-of-memory trial"
    assert len([t for t in trials if t.user_attrs.get("status") != "interrupted"]) == 16


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_trial_run_again_and_the_study_finishes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    s = study(blobs(Slow), url, n_trials=4, budget_samples=1200)
    killed: list[FrozenTrial] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            try:
                trials = optuna.load_study(study_name=s.study_name, storage=open_storage(url)).get_trials()
            except (KeyError, Exception):
                trials = []
            for t in trials:
                pid = t.system_attrs.get(OWNER_KEY, {}).get("pid")
                if pid is not None and pid != os.getpid() and in_trial([t], pid) is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(t)
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    result = s.run()
    killer.join()
    assert killed, "no worker was killed"
    (victim,) = killed
    trials = {t.number: t for t in stored(s)}
    assert trials[victim.number].user_attrs["status"] == "interrupted"  # taken over, not counted
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert count_finished(result.optuna_study) == 4 and not [t for t in trials.values() if not t.state.is_finished()]
    assert "killed by signal 9" in caplog.text and "worker" in caplog.text  # the crash is named, with its device
    assert "(cpu)" in caplog.text or "on cpu" in caplog.text


SLOW_SCRIPT = """
import time

import torch
import bstune


class Slow(torch.nn.Linear):
    def forward(self, x):
        time.sleep(0.01)
        return super().forward(x)


def make_task():
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    return bstune.Task(model=lambda: Slow(4, 2), train_data=(x[:160], y[:160]),
                       val_data=(x[160:], y[160:]), loss=torch.nn.CrossEntropyLoss(), name="slow")
"""


def _two_running(db: Path) -> list[int] | None:
    """The numbers of the trials running in ``db`` once there are two; None before. Read with SQLite alone,
    read-only: opening it through Optuna while bstune makes its tables would race bstune."""
    query = (
        "SELECT t.number FROM trials t WHERE t.state = 'RUNNING' AND EXISTS "
        "(SELECT 1 FROM trial_user_attributes a WHERE a.trial_id = t.trial_id AND a.key = 'config')"
    )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
            busy = [number for (number,) in con.execute(query)]
    except sqlite3.Error:
        return None
    return busy if len(busy) == 2 else None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _interrupted_in_one_line(proc: subprocess.Popen[bytes]) -> str:
    """What a ``bstune run`` stopped by Ctrl-C said, once it exited 130 with one line, no traceback, and left no
    process of its group behind."""
    code = proc.wait(timeout=120)
    err = proc.stderr.read().decode().strip()  # type: ignore[union-attr]
    assert code == 130, err  # what it said, where it ended otherwise (once exit 1 under heavy load)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(proc.pid), "a worker process was left behind"
    return err


def _owner_pid(db: Path, number: int) -> int:
    """The pid of the worker process running trial ``number`` (its owner attribute), read as _two_running reads."""
    query = (
        "SELECT a.value_json FROM trial_system_attributes a JOIN trials t ON a.trial_id = t.trial_id "
        "WHERE t.number = ? AND a.key = ?"
    )
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
        ((value,),) = con.execute(query, (number, OWNER_KEY)).fetchall()
    return int(json.loads(value)["pid"])


@pytest.mark.slow
@pytest.mark.parametrize("to", ["group", "parent", "worker"])
def test_ctrl_c_marks_the_running_trials_interrupted_and_leaves_no_process(tmp_path: Path, to: str) -> None:
    """``group``: a terminal's Ctrl-C, to every process of the run; ``parent``: ``kill -INT`` to bstune alone;
    ``worker``: ``kill -INT`` to one trial worker alone (the study stops, not restarts the worker as a crash)."""
    (tmp_path / "slow.py").write_text(SLOW_SCRIPT)  # a lambda in the task: sent to the workers by value
    (tmp_path / "slow.yaml").write_text("name: s\nbatch_size: {min: 16, max: 32}\n")
    args = [
        *("run", "slow.py", "--space", "slow.yaml", "--out", "out", "--mode", "baseline", "--pruner", "none"),
        # trials of ~10 s or more: a victim must still be running when a `kill -INT` to bstune alone reaches
        # the workers, which the parent forwards only after giving them _OWN_STOP_S to stop on their own
        *("--rescore-top", "0", "--trials", "6", "--budget-samples", "32000", "--no-progress"),
        *("--device", "cpu", "--parallel-trials", "2"),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bstune.cli", *args],
        cwd=tmp_path,
        env=python_env(),
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    db = tmp_path / "out" / "study.db"

    def both_running() -> list[int] | None:
        return _two_running(db)

    victims = wait_for("a trial running in each worker", both_running, [proc])
    if to == "group":
        os.killpg(proc.pid, signal.SIGINT)
    elif to == "parent":
        proc.send_signal(signal.SIGINT)
    else:
        os.kill(_owner_pid(db, victims[0]), signal.SIGINT)
    assert _interrupted_in_one_line(proc).startswith("bstune: interrupted; kept")
    trials = {
        t.number: t
        for t in optuna.load_study(study_name="bstune-slow", storage=open_storage(f"sqlite:///{db}")).get_trials()
    }
    for victim in victims:
        t = trials[victim]
        assert t.state == TrialState.FAIL and t.user_attrs["status"] == "interrupted", t
    assert not [t for t in trials.values() if t.state == TrialState.RUNNING]
    again = sorted(t.user_attrs["retry_of"] for t in trials.values() if t.state == TrialState.WAITING)
    assert again == sorted(victims)  # both queued to run again on --resume


# a site hook that makes every spawned child's start take seconds (as importing torch does on a loaded machine)
# and notes each start in $STARTS_FILE
SLOW_START = """
import os, sys, time
if any("spawn_main" in a for a in sys.orig_argv):
    with open(os.environ["STARTS_FILE"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(3)
"""


@pytest.mark.slow
def test_ctrl_c_while_the_workers_start_stops_the_study_with_one_line(tmp_path: Path) -> None:
    """A Ctrl-C that landed while a trial worker was importing printed Python's traceback from inside the import
    (and, between two workers' starts, left the one started last running on)."""
    (tmp_path / "slow.py").write_text(SLOW_SCRIPT)
    (tmp_path / "slow.yaml").write_text("name: s\nbatch_size: {min: 16, max: 32}\n")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_START)
    starts = tmp_path / "starts"
    env = python_env()
    env |= {"PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{env['PYTHONPATH']}", "STARTS_FILE": str(starts)}
    args = [
        *("run", "slow.py", "--space", "slow.yaml", "--out", "out", "--mode", "baseline", "--pruner", "none"),
        *("--rescore-top", "0", "--trials", "4", "--budget-samples", "3200", "--no-progress"),
        *("--device", "cpu", "--parallel-trials", "2"),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bstune.cli", *args], cwd=tmp_path, env=env, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip

    def first_start() -> str | None:
        return (starts.read_text() or None) if starts.exists() else None

    wait_for("a trial worker starting", first_start, [proc])
    os.killpg(proc.pid, signal.SIGINT)  # the worker is inside its start, seconds before its own code runs
    assert _interrupted_in_one_line(proc).startswith("bstune: interrupted; kept 0 finished trials")


NO_GUARD_SCRIPT = """
import torch
import bstune

x = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))  # 256 kB: more than a pipe holds
y = (x[:, 0] > 0).long()


def model():
    return torch.nn.Linear(16, 2)


task = bstune.Task(model=model, train_data=(x[:3000], y[:3000]), val_data=(x[3000:], y[3000:]),
                   loss=torch.nn.CrossEntropyLoss(), name="noguard")
space = bstune.SearchSpace.from_dict({"name": "s", "batch_size": {"min": 16, "max": 32}})
bstune.Study(task, space, n_trials=2, budget_samples=640, mode="baseline", parallel_trials=2, rescore_top=0,
             device="cpu", progress=False).run()
"""


@pytest.mark.slow
def test_a_script_without_the_main_guard_fails_with_the_reason_and_does_not_hang(tmp_path: Path) -> None:
    """Each spawned worker imports the script again and dies at once; writing it its arguments (the task's data)
    then blocked the study for good."""
    (tmp_path / "noguard.py").write_text(NO_GUARD_SCRIPT)
    env = python_env() | {"TMPDIR": str(tmp_path)}  # where the workers' payload files go
    done = subprocess.run(
        [sys.executable, "noguard.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("bstune.study._workers.WorkerCrashError: trial workers died as they started"), last
    assert 'under `if __name__ == "__main__":`' in last, last
    assert not list(tmp_path.glob("bstune-*")), "a payload file (the task's data) was left behind"


GUARDED_DYING_SCRIPT = (
    NO_GUARD_SCRIPT.replace(
        "    return torch.nn.Linear(16, 2)",
        "    if multiprocessing.parent_process() is not None:  # in a trial worker, mid-trial\n"
        "        os._exit(1)\n"
        "    return torch.nn.Linear(16, 2)",
    )
    .replace("import torch\n", "import multiprocessing\nimport os\n\nimport torch\n")
    .replace("bstune.Study(", 'if __name__ == "__main__":\n    bstune.Study(')
)


@pytest.mark.slow
def test_workers_dying_mid_trial_are_not_told_about_the_main_guard(tmp_path: Path) -> None:
    (tmp_path / "dying.py").write_text(GUARDED_DYING_SCRIPT)
    done = subprocess.run(
        [sys.executable, "dying.py"], cwd=tmp_path, env=python_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("bstune.study._workers.WorkerCrashError: 0 of 2 trials finished: trial workers died"), last
    assert "__main__" not in last, last


@pytest.mark.slow
def test_workers_of_a_killed_study_stop_and_mark_their_trials_interrupted(tmp_path: Path) -> None:
    """SIGKILL to bstune alone (no cleanup in it): its workers notice, stop as on Ctrl-C, and exit."""
    (tmp_path / "slow.py").write_text(SLOW_SCRIPT)
    (tmp_path / "slow.yaml").write_text("name: s\nbatch_size: {min: 16, max: 32}\n")
    args = [
        *("run", "slow.py", "--space", "slow.yaml", "--out", "out", "--mode", "baseline", "--pruner", "none"),
        # trials of ~10 s or more, as above: a victim must still be running when its worker notices (within
        # 0.5 s, longer on a loaded machine) that the study's process is gone
        *("--rescore-top", "0", "--trials", "6", "--budget-samples", "32000", "--no-progress"),
        *("--device", "cpu", "--parallel-trials", "2"),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bstune.cli", *args],
        cwd=tmp_path,
        env=python_env(),
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    db = tmp_path / "out" / "study.db"

    def running() -> list[int] | None:
        return _two_running(db)

    victims = wait_for("a trial running in each worker", running, [proc])
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(proc.pid), "a worker process outlived the study's process"
    trials = {
        t.number: t
        for t in optuna.load_study(study_name="bstune-slow", storage=open_storage(f"sqlite:///{db}")).get_trials()
    }
    for victim in victims:
        t = trials[victim]
        assert t.state == TrialState.FAIL and t.user_attrs["status"] == "interrupted", t


class _Failing(torch.nn.Module):
    """A model whose forward raises: every trial fails."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a bug in the model")


@pytest.mark.slow
def test_workers_that_give_up_on_failing_code_end_the_study_as_failed_not_crashed(tmp_path: Path) -> None:
    """A review found that workers which stop drawing trials (their code fails) were read as crashed workers."""
    x, y = make_classification(n=520)
    task = bstune.Task(
        model=_Failing,
        train_data=(x[:400], y[:400]),
        val_data=(x[400:], y[400:]),
        loss=torch.nn.CrossEntropyLoss(),
        validate=False,  # its check would catch this model first
    )
    with pytest.raises(
        bstune.study.StudyFailedError, match=r"none of the \d trials .*RuntimeError: a bug in the model"
    ):
        study(task, f"sqlite:///{tmp_path}/s.db", n_trials=12).run()
    trials = optuna.load_study(study_name="bstune-task", storage=f"sqlite:///{tmp_path}/s.db").trials
    assert 3 <= len(trials) < 12


DATASET_LOOP_SCRIPT = """
import functools

import torch
from torch.nn import functional as F


class Blobs(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def stack(items):
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


@functools.cache
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return x[:400], y[:400], x[400:], y[400:]


def train(ctx):
    x, y, vx, vy = data()
    train_set = Blobs(x, y)
    model = torch.nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=ctx.config["lr"])
    for xb, yb in ctx.loader(train_set, num_workers=1, collate_fn=stack):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctx.step(loss)
        if ctx.at_milestone():
            with torch.no_grad():
                ctx.report(val_loss=F.cross_entropy(model(vx), vy))
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["cli", "python", "python-spawn"])
def test_a_loop_with_its_own_dataset_class_and_cached_data_runs_on_two_workers(tmp_path: Path, how: str) -> None:
    """A newcomer's `bstune run loop.py --parallel-trials 2` (data from a functools.cache function): every worker
    died with "No module named 'bstune_user_...'", examples/own_loop.py's too. From Python (the loop in the
    script that runs the study), its DataLoader's workers failed: "it's not the same object as __main__.Blobs".
    Where processes spawn (macOS; "python-spawn"), they failed so even once fork had mended it on Linux."""
    (tmp_path / "loop.py").write_text(DATASET_LOOP_SCRIPT)
    args = "--trials 2 --budget-samples 800 --mode baseline --rescore-top 0 --parallel-trials 2 --device cpu"
    if how == "cli":
        command = [
            sys.executable,
            "-m",
            "bstune",
            "run",
            "loop.py",
            "--space",
            "space.yaml",
            "--out",
            "out",
            *args.split(),
        ]
        (tmp_path / "space.yaml").write_text("name: s\nbatch_size: {min: 8, max: 64}\nlr: {min: 0.01, max: 1.0}\n")
    else:
        (tmp_path / "study.py").write_text(
            DATASET_LOOP_SCRIPT
            + 'if __name__ == "__main__":\n'
            + (
                "    import multiprocessing\n    multiprocessing.set_start_method('spawn')\n"
                if how == "python-spawn"
                else ""
            )
            + "    import bstune\n"
            + '    space = {"name": "s", "batch_size": {"min": 8, "max": 64}, "lr": {"min": 0.01, "max": 1.0}}\n'
            + "    result = bstune.Study(train, space, n_trials=2, budget_samples=800, mode='baseline', rescore_top=0,\n"
            + "                          parallel_trials=2, device='cpu', progress=False).run()\n"
            + "    print(sorted(str(t.status) for t in result.trials))\n"
        )
        command = [sys.executable, "study.py"]
    done = subprocess.run(command, cwd=tmp_path, env=python_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "failed" not in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
def test_a_loop_defined_under_the_main_guard_with_settings_from_there_runs_on_two_workers(tmp_path: Path) -> None:
    """A reviewer's script defined its loop inside ``if __name__ == "__main__":`` and set a module global there
    (as argparse would): the workers must train that function, with that value (shipped by value, not re-imported
    from a module that lacks both)."""
    script = (
        "import torch\nimport bstune\nfrom torch.nn import functional as F\nWIDTH = 4\n"
        'if __name__ == "__main__":\n'
        "    WIDTH = 8\n"
        "    def train(ctx):\n"
        "        x = torch.randn(200, WIDTH)\n"
        "        y = (x[:, 0] > 0).long()\n"
        "        model = torch.nn.Linear(WIDTH, 2)\n"
        "        opt = torch.optim.SGD(model.parameters(), lr=ctx.config['lr'])\n"
        "        while not ctx.done:\n"
        "            for i in range(0, 200 - ctx.batch_size + 1, ctx.batch_size):\n"
        "                loss = F.cross_entropy(model(x[i : i + ctx.batch_size]), y[i : i + ctx.batch_size])\n"
        "                opt.zero_grad(); loss.backward(); opt.step()\n"
        "                if ctx.step(loss):\n"
        "                    break\n"
        "                if ctx.at_milestone():\n"
        "                    ctx.report(val_loss=loss, width=WIDTH)\n"
        '    space = {"name": "s", "batch_size": {"min": 8, "max": 32}, "lr": {"min": 0.01, "max": 1.0}}\n'
        "    result = bstune.Study(train, space, n_trials=2, budget_samples=400, mode='baseline', rescore_top=0,\n"
        "                          parallel_trials=2, device='cpu', progress=False, pruner='none').run()\n"
        "    print(sorted({h['width'] for t in result.trials for h in t.history}))\n"
    )
    (tmp_path / "guarded.py").write_text(script)
    done = subprocess.run(
        [sys.executable, "guarded.py"], cwd=tmp_path, env=python_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[8.0]", done.stdout
