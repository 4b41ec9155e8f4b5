"""Real study processes on one SQLite or journal file: SIGKILL and resume, concurrent writers.

Each test starts :mod:`tests.reliability.worker` processes (a study of small MLPs on
Gaussian blobs, 4,000 samples a trial, as a task or as a user's training function) and
checks the storage they leave behind.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from bstune._keys import FROM_PROBE_ATTR, SETTINGS_ATTR
from bstune.study import StudyResult, open_storage
from bstune.study._liveness import HEARTBEAT_KEY, OWNER_KEY, count_finished
from tests.reliability.conftest import start_worker, wait_for
from tests.reliability.worker import NAME, make_study

pytestmark = pytest.mark.slow


def stored(storage_url: str) -> list[FrozenTrial]:
    """The trials in the storage now, as a fresh reader sees them; [] before the study exists."""
    try:
        return optuna.load_study(study_name=NAME, storage=open_storage(storage_url)).get_trials()
    except KeyError:
        return []


def in_trial(trials: list[FrozenTrial], pid: int) -> FrozenTrial | None:
    """The trial process ``pid`` is training (its heartbeat runs and its config is stored), if any."""
    for t in trials:
        mine = t.system_attrs.get(OWNER_KEY, {}).get("pid") == pid
        if t.state == TrialState.RUNNING and mine and HEARTBEAT_KEY in t.system_attrs and "config" in t.user_attrs:
            return t
    return None


def finished_by(out: Path) -> dict[int, list[Any]]:
    return {int(k): v for k, v in json.loads(out.read_text()).items()}


def test_resume_after_sigkill_keeps_every_finished_trial_and_reruns_none(storage_url: str, tmp_path: Path) -> None:
    kill_and_resume(storage_url, tmp_path, function=False)


@pytest.mark.parametrize("mode", ["baseline", "prior"])
def test_a_study_of_a_training_function_resumes_after_sigkill_as_a_tasks_does(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the user's own loop (tests.reliability.worker.train_blobs), on a real SQLite file; in the prior
    # mode the killed worker probed through the loop first, and the resume takes the stored probe
    def probe_again(**_: Any) -> None:
        raise AssertionError("the resumed study ran the probe again")

    monkeypatch.setattr("bstune.study._study.probe_function", probe_again)
    result = kill_and_resume(f"sqlite:///{tmp_path}/study.db", tmp_path, function=True, mode=mode)
    assert (result.probe is not None) == (mode == "prior")


def kill_and_resume(storage_url: str, tmp_path: Path, *, function: bool, mode: str = "baseline") -> StudyResult:
    """SIGKILL a worker inside its 4th trial, resume in this process: every finished trial kept,
    none run again, the killed one marked interrupted and run again once."""
    # the worker stops inside the first trial that reports once three have completed, and says which: a poll of
    # the storage for a running trial raced that trial's end (a CI run's kill landed between two trials)
    hold = tmp_path / "held"
    proc = start_worker(storage_url, 8, tmp_path / "w.json", function=function, mode=mode, hold=hold)
    number = wait_for(
        "a trial held after 3 completed", lambda: int(hold.read_text()) if hold.exists() else None, [proc]
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    after = stored(storage_url)
    victim = in_trial(after, proc.pid)
    assert victim is not None and victim.number == number
    before = {t.number: (t.state, t.value, t.params) for t in after if t.state.is_finished()}
    assert len(before) >= 3 and victim.number not in before

    result = make_study(storage_url, 8, function=function, mode=mode).run()  # the resume
    trials = {t.number: t for t in stored(storage_url)}
    for number, (state, value, params) in before.items():  # every finished trial kept as it was, none re-run
        assert (trials[number].state, trials[number].value, trials[number].params) == (state, value, params)
        assert not any(t.user_attrs.get("retry_of") == number for t in trials.values())
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["status"] == "interrupted"
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params  # the killed config, run again once
    assert not [t for t in trials.values() if not t.state.is_finished()]
    assert count_finished(result.optuna_study) == 8
    # what the killed worker stored is a study of the training function (a resume with other settings is refused)
    assert result.optuna_study is not None
    assert result.optuna_study.user_attrs[SETTINGS_ATTR]["task"] == ("train_blobs" if function else "blobs")
    assert [t.number for t in result.trials] == sorted(trials)
    return result


def test_two_processes_on_one_file_lose_nothing_and_fail_nothing_of_each_other(
    storage_url: str, tmp_path: Path
) -> None:
    # the second process opens the study while the first is inside a trial: the old resume failed that trial.
    # It starts first and waits at a gate, so that its start-up (seconds on a loaded machine) cannot
    # outlast the first process's ten trials.
    gate = tmp_path / "gate"
    second = start_worker(storage_url, 10, tmp_path / "b.json", gate=gate)
    try:
        wait_for("the second process ready at its gate", lambda: Path(f"{gate}.ready").exists() or None, [second])
        first = start_worker(storage_url, 10, tmp_path / "a.json")
        wait_for("the first process inside a trial", lambda: in_trial(stored(storage_url), first.pid), [first])
    except BaseException:
        second.kill()  # a failed wait must not leave it polling its gate after the test
        raise
    gate.touch()
    for proc in (first, second):
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    a, b = finished_by(tmp_path / "a.json"), finished_by(tmp_path / "b.json")
    assert a and b and not set(a) & set(b)  # both worked, never on the same trial

    trials = {t.number: t for t in stored(storage_url)}
    for number, (state, value) in (a | b).items():  # everything either process finished is there, as it left it
        assert trials[number].state.name == state and trials[number].value == value
    assert set(trials) == set(a) | set(b)  # and nothing else: no trial lost, none orphaned
    assert not [t for t in trials.values() if t.user_attrs.get("status") == "interrupted"]
    assert not [t for t in trials.values() if "retry_of" in t.user_attrs]
    # n_trials counts both processes' trials: the one that reached it first waited for the other's last trial,
    # and neither took one more (each used to finish the one it was in, and the study held 11)
    assert len(trials) == 10
    assert [(tmp_path / f"{x}.json.running").read_text() for x in "ab"] == ["0", "0"]


def test_a_killed_peers_trial_is_taken_over_once_by_the_live_one(storage_url: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # as above: the victim's start-up must not outlast the survivor's twelve trials
    hold = tmp_path / "held"  # the victim stops inside a trial once three have completed (see kill_and_resume)
    victim = start_worker(storage_url, 12, tmp_path / "victim.json", gate=gate, hold=hold)
    try:
        wait_for("the victim ready at its gate", lambda: Path(f"{gate}.ready").exists() or None, [victim])
        survivor = start_worker(storage_url, 12, tmp_path / "survivor.json")
        wait_for("the study to exist", lambda: stored(storage_url) or None, [survivor])
    except BaseException:
        victim.kill()
        raise
    gate.touch()
    number = wait_for("the victim held in a trial", lambda: int(hold.read_text()) if hold.exists() else None, [victim])
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    # read by number: the survivor may have taken the killed trial over already
    (running,) = [t for t in stored(storage_url) if t.number == number]
    assert running.system_attrs[OWNER_KEY]["pid"] == victim.pid
    assert survivor.wait(timeout=600) == 0, survivor.stderr.read().decode()[-2000:]  # type: ignore[union-attr]

    trials = {t.number: t for t in stored(storage_url)}
    killed = trials[running.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["status"] == "interrupted"
    retries = [t for t in trials.values() if t.user_attrs.get("retry_of") == running.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == running.params
    assert retries[0].system_attrs[OWNER_KEY]["pid"] == survivor.pid
    mine = finished_by(tmp_path / "survivor.json")
    assert all(trials[n].user_attrs.get("status") != "interrupted" for n in mine)
    assert not [t for t in trials.values() if not t.state.is_finished()]


def test_two_starts_of_one_prior_study_at_once_probe_once(tmp_path: Path) -> None:
    """Two `bstune run` of one new study started together both ran the probe (and each recorded its run)."""
    storage = f"sqlite:///{tmp_path}/study.db"
    gate = tmp_path / "gate"
    procs = [start_worker(storage, 4, tmp_path / f"{x}.json", gate=gate, mode="prior") for x in "ab"]
    try:
        for proc in procs:
            wait_for("both processes at their gate", lambda: Path(f"{gate}.ready").exists() or None, [proc])
        gate.touch()
        for proc in procs:
            assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    finally:
        for proc in procs:
            proc.kill()
    assert sorted((tmp_path / f"{x}.json.probe").read_text() for x in "ab") == ["ran", "stored"]
    trials = stored(storage)
    assert len(trials) == 4 and sum(bool(t.user_attrs.get(FROM_PROBE_ATTR)) for t in trials) == 1
