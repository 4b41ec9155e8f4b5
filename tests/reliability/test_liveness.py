"""Telling abandoned trials from live ones on a shared storage, and retrying each abandoned one once.

Every test uses a real SQLite or journal file and real processes (a live sleeper, a
process that has exited, processes racing to take over one trial).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

import bstune
from bstune.study import open_storage
from bstune.study._liveness import (
    HEARTBEAT_KEY,
    OWNER_KEY,
    OWNERLESS_S,
    Owner,
    abandoned_reason,
    claim_abandoned,
    count_finished,
    count_taken,
    requeue_interrupted,
    retry_abandoned,
    retry_unqueued,
)
from bstune.study._settings import StudySettings
from bstune.study._trial_taking import peers_running, wait_for_peers
from tests.reliability.worker import NAME, make_study

GRACE = 60.0


def running_trial(
    storage_url: str, owner: Owner | None, heartbeat: float | None, *, drawn: bool = True
) -> tuple[optuna.Study, int]:
    """A study holding one RUNNING trial (with a sampled parameter) owned by ``owner``; ``drawn``: it has
    stored its whole config, as a trial does before it trains."""
    study = optuna.create_study(storage=open_storage(storage_url), study_name="s", load_if_exists=True)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    if drawn:
        trial.set_user_attr("config", {"x": trial.params["x"]})
    if owner is not None:
        study._storage.set_trial_system_attr(trial._trial_id, OWNER_KEY, owner.to_dict())
    if heartbeat is not None:
        study._storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_KEY, heartbeat)
    return study, trial.number


def exited_process() -> Owner:
    """The owner record of a real process that ran on this host and has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    owner = Owner.of(proc.pid)
    proc.wait()
    assert owner.started is not None and owner.started > 0
    return owner


def test_a_live_owner_on_this_host_keeps_its_trial_whatever_its_heartbeat(
    storage_url: str, sleeper: subprocess.Popen[bytes]
) -> None:
    study, number = running_trial(storage_url, Owner.of(sleeper.pid), heartbeat=time.time() - 10 * GRACE)
    assert abandoned_reason(study.trials[number], GRACE) is None
    assert retry_abandoned(study, GRACE) == []
    assert study.trials[number].state == TrialState.RUNNING
    assert not study.get_trials(states=(TrialState.WAITING,))


def test_a_dead_owner_on_this_host_is_noticed_at_once_and_retried_once(storage_url: str) -> None:
    owner = exited_process()
    study, number = running_trial(storage_url, owner, heartbeat=time.time())  # a fresh heartbeat does not save it
    assert f"pid {owner.pid}" in (abandoned_reason(study.trials[number], GRACE) or "")
    assert retry_abandoned(study, GRACE) == [number]
    old = study.trials[number]
    assert old.state == TrialState.FAIL and old.user_attrs["status"] == "interrupted"
    assert "is gone" in old.user_attrs["message"]
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.user_attrs["retry_of"] == number
    assert study.trials[retry.number].system_attrs["fixed_params"] == old.params  # the same config runs again
    assert retry_abandoned(study, GRACE) == []  # taken over once, never again
    assert count_finished(study) == 0  # an abandoned trial does not count towards n_trials


def test_a_reused_pid_does_not_keep_a_dead_owners_trial(storage_url: str, sleeper: subprocess.Popen[bytes]) -> None:
    live = Owner.of(sleeper.pid)
    assert live.started is not None
    earlier = dataclasses.replace(live, started=live.started - 1)  # the same pid, an older (dead) process
    study, number = running_trial(storage_url, earlier, heartbeat=time.time())
    assert "is gone" in (abandoned_reason(study.trials[number], GRACE) or "")


def test_an_owner_on_another_host_is_judged_by_its_heartbeat(storage_url: str) -> None:
    elsewhere = Owner("another-host", "another-boot", 1, 1)
    now = time.time()
    study, number = running_trial(storage_url, elsewhere, heartbeat=now - GRACE / 2)
    trial = study.trials[number]
    assert abandoned_reason(trial, GRACE, now=now) is None
    assert "no heartbeat for" in (abandoned_reason(trial, GRACE, now=now + GRACE) or "")
    assert retry_abandoned(study, GRACE) == []  # still within its grace period: left alone
    assert study.trials[number].state == TrialState.RUNNING


def test_a_trial_that_never_beat_is_judged_by_its_start(storage_url: str) -> None:
    study, number = running_trial(storage_url, owner=None, heartbeat=None)
    trial = study.trials[number]
    assert abandoned_reason(trial, GRACE) is None
    assert abandoned_reason(trial, GRACE, now=time.time() + 2 * GRACE) is not None


def test_a_trial_that_names_no_owner_minutes_after_its_start_is_abandoned_within_a_long_grace_period(
    storage_url: str,
) -> None:
    """A disk that filled between Optuna storing a trial and bstune naming its owner left it running with neither
    owner nor heartbeat: a resume counted it as a peer's and waited out the grace period (600 s), printing nothing."""
    study, number = running_trial(storage_url, owner=None, heartbeat=None, drawn=False)
    trial = study.trials[number]
    start = trial.datetime_start.timestamp()  # type: ignore[union-attr]
    assert abandoned_reason(trial, 600.0, now=start + OWNERLESS_S - 1) is None  # its process may name itself yet
    said = abandoned_reason(trial, 600.0, now=start + OWNERLESS_S + 1)
    assert said == "it names no process 181 s after it started: the one that took it stopped before recording itself"
    # one that named its owner is judged by that owner, however long its heartbeat takes (another host: the grace)
    elsewhere, other = running_trial(storage_url, Owner("another-host", "another-boot", 1, 1), heartbeat=None)
    assert abandoned_reason(elsewhere.trials[other], 600.0, now=start + 2 * OWNERLESS_S) is None
    # nor is it a peer's running trial, which a run between trials waits for
    assert peers_running([trial], 600.0, now=start + OWNERLESS_S + 1) == 0


def test_finished_trials_are_never_taken_over(storage_url: str) -> None:
    study, number = running_trial(storage_url, exited_process(), heartbeat=None)
    study.tell(number, 1.0)
    assert abandoned_reason(study.trials[number], GRACE) is None
    assert retry_abandoned(study, GRACE) == []
    assert study.trials[number].state == TrialState.COMPLETE and study.trials[number].value == 1.0
    assert not claim_abandoned(study._storage, study.trials[number]._trial_id)


def _take_over(url: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    results.put(retry_abandoned(study, GRACE))


def test_trials_taken_are_counted_from_one_read_so_one_finishing_meanwhile_still_counts(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker counted finished trials, then running ones, in two reads; a trial that finished in between
    was in neither, and the worker took one trial too many (7 of 6 in a loaded CI run). Here a trial
    finishes right after every read."""
    study, number = running_trial(storage_url, Owner.current(), time.time())
    for value in (1.0, 2.0):
        study.add_trial(optuna.trial.create_trial(value=value))
    interrupted = study.ask()
    study._storage.set_trial_user_attr(interrupted._trial_id, "status", "interrupted")
    study.tell(interrupted, state=TrialState.FAIL)  # abandoned and queued again: it does not count
    read = study.get_trials
    reads: list[int] = []

    def read_then_finish(*args: Any, **kwargs: Any) -> list[optuna.trial.FrozenTrial]:
        trials = read(*args, **kwargs)
        if not reads:
            study.tell(number, 0.5)  # the running trial finishes just after the first read
        reads.append(len(trials))
        return trials

    monkeypatch.setattr(study, "get_trials", read_then_finish)
    assert count_taken(study) == 3  # 2 finished + 1 running, from the one read
    assert count_taken(study) == 3 and count_finished(study) == 3  # now 3 finished, none running
    assert len(reads) == 3


def test_processes_racing_to_take_over_one_trial_retry_it_once(storage_url: str) -> None:
    # Optuna's own RUNNING -> FAIL (read, then write) lets several SQLite writers win in most rounds
    ctx = multiprocessing.get_context("fork")  # quick: the children only touch the storage
    for _ in range(3):
        study, number = running_trial(storage_url, exited_process(), heartbeat=None)
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_take_over, args=(storage_url, barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        taken = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        assert sorted(taken, key=len) == [[], [], [], [number]]  # exactly one process won
        waiting = study.get_trials(states=(TrialState.WAITING,))
        assert [t.user_attrs["retry_of"] for t in waiting] == [number]
        study._storage.set_trial_state_values(waiting[0]._trial_id, TrialState.FAIL)  # out of the way of the next round


@pytest.mark.slow
def test_a_study_leaves_a_live_peers_trial_alone_and_retries_a_dead_ones(
    storage_url: str, sleeper: subprocess.Popen[bytes]
) -> None:
    def study(n_trials: int) -> bstune.Study:
        return make_study(storage_url, n_trials)

    study(1).run()  # creates the study with its settings
    stored = optuna.load_study(study_name=NAME, storage=open_storage(storage_url))

    def peers_trial() -> optuna.trial.Trial:
        """A trial another process (``sleeper``) has drawn whole and is training."""
        trial = stored.ask({"batch_size": optuna.distributions.IntDistribution(16, 128, log=True)})
        stored._storage.set_trial_system_attr(trial._trial_id, OWNER_KEY, Owner.of(sleeper.pid).to_dict())
        stored._storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_KEY, time.time())
        stored._storage.set_trial_user_attr(trial._trial_id, "config", {})
        return trial

    # another process runs this study meanwhile: its trial counts toward n_trials and is left to it; this run
    # trains one trial and waits for the peer's to end (the peer ends it 3 s in) before it reports
    peer = peers_trial()
    ends = threading.Timer(3.0, lambda: stored.tell(peer, state=TrialState.PRUNED))
    ends.start()
    try:
        result = study(3).run()
    finally:
        ends.join()
    assert [t.status for t in result.trials].count("running") == 0
    assert stored.trials[peer.number].state == TrialState.PRUNED  # as its owner told it, never taken over
    assert count_finished(stored) == 3 and len(stored.trials) == 3

    dead = peers_trial()
    sleeper.kill()
    sleeper.wait()
    result = study(4).run()  # the peer died: its trial is failed, and its config runs again, once
    by_number = {t.number: t for t in stored.get_trials()}
    assert by_number[dead.number].state == TrialState.FAIL
    assert by_number[dead.number].user_attrs["status"] == "interrupted"
    retries = [t for t in by_number.values() if t.user_attrs.get("retry_of") == dead.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params["batch_size"] == dead.params["batch_size"]
    assert count_finished(stored) == 4 and len(by_number) == 5


def test_a_trial_declared_abandoned_while_it_runs_is_dropped_and_the_study_goes_on(tmp_path: Path) -> None:
    """What a live process does when a peer wrongly takes its trial over (e.g. after a long network partition)."""
    url = f"sqlite:///{tmp_path}/s.db"
    taken: list[int] = []

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if out.requires_grad and not taken:  # inside the first trial: a "peer" fails it and queues its retry
            study = optuna.load_study(study_name=NAME, storage=open_storage(url))
            (running,) = study.get_trials(states=(TrialState.RUNNING,))
            study._storage.set_trial_user_attr(running._trial_id, "status", "interrupted")  # as retry_abandoned does
            assert claim_abandoned(study._storage, running._trial_id)
            study.enqueue_trial(dict(running.params), user_attrs={"retry_of": running.number})
            taken.append(running.number)
        return torch.nn.functional.cross_entropy(out, y)

    s = make_study(url, 3)
    s.task = dataclasses.replace(s.task, loss=loss)
    result = s.run()  # no "Cannot tell a FAIL trial" escapes
    stored = optuna.load_study(study_name=NAME, storage=open_storage(url)).get_trials()
    assert taken == [0] and stored[0].state == TrialState.FAIL
    assert [t.user_attrs.get("retry_of") for t in stored[1:]] == [0, None, None]
    assert all(t.state == TrialState.COMPLETE for t in stored[1:]) and len(result.trials) == 4


def _ask(url: str, barrier: Any, results: Any) -> None:
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    barrier.wait()
    results.put(study.ask().number)


def test_processes_asking_at_once_get_a_queued_retry_once(storage_url: str) -> None:
    # Optuna's own WAITING -> RUNNING (read, then write) handed one queued trial to several SQLite processes
    ctx = multiprocessing.get_context("fork")
    for _ in range(3):
        study = optuna.create_study(storage=open_storage(storage_url), study_name="s", load_if_exists=True)
        study.enqueue_trial({"x": 0.5}, user_attrs={"retry_of": 0})
        (queued,) = study.get_trials(states=(TrialState.WAITING,))
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_ask, args=(storage_url, barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        got = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        assert got.count(queued.number) == 1 and len(set(got)) == 4  # one process runs the retry, the others new trials
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            study.tell(t.number, state=TrialState.FAIL)


def test_a_run_that_waits_for_a_peers_trial_says_which_and_whose(
    storage_url: str, sleeper: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """The resume that waited out a grace period for a trial naming no owner said so at INFO: a console at its
    default level showed nothing for minutes."""
    study, number = running_trial(storage_url, Owner.of(sleeper.pid), heartbeat=time.time())
    _, ownerless = running_trial(storage_url, owner=None, heartbeat=None)
    polls: list[int] = []

    def end_them() -> None:  # the peers' trials end at the first look
        polls.append(1)
        for n in (number, ownerless):
            study.tell(n, state=TrialState.FAIL)

    with caplog.at_level(logging.WARNING, logger="bstune.study._trial_taking"):
        waited = wait_for_peers(study, StudySettings(heartbeat_interval=0.05, grace_period=600.0), end_them)
    assert waited and polls == [1]
    assert (
        f"waiting for trial {number} (pid {sleeper.pid} on {Owner.current().host}), trial {ownerless} (no process "
        "named yet: taken over 180 s after its start), running in another process on this study: n_trials counts "
        "them"
    ) in caplog.text


@pytest.mark.slow
def test_a_resume_takes_over_a_trial_left_before_it_named_its_owner(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CI run's resume after a full disk printed nothing for 300 s: the disk had filled between Optuna storing a
    trial and bstune naming its owner, and the resume waited the grace period (600 s) for that trial's 'peer'."""
    make_study(storage_url, 2).run()
    left = optuna.load_study(study_name=NAME, storage=open_storage(storage_url)).ask()  # no owner, no heartbeat
    monkeypatch.setattr("bstune.study._liveness.OWNERLESS_S", 1.0)  # three minutes, shortened
    time.sleep(1.5)
    done: list[bstune.StudyResult] = []
    resume = threading.Thread(target=lambda: done.append(make_study(storage_url, 4).run()), daemon=True)
    resume.start()
    resume.join(timeout=300)
    assert done, "the resume waited for the trial that names no owner"
    trials = optuna.load_study(study_name=NAME, storage=open_storage(storage_url)).trials
    assert trials[left.number].state == TrialState.FAIL and trials[left.number].user_attrs["status"] == "interrupted"
    assert count_finished(done[0].optuna_study) == 4  # type: ignore[arg-type]


def test_an_interrupted_trial_whose_queueing_was_cut_short_runs_again_once_on_resume(storage_url: str) -> None:
    """A newcomer's Ctrl-C landed 0.2 s into a trial: it was marked interrupted, but its retry was never
    queued (the write waited out SQLite's lock), and --resume never ran its config, the best of the study."""
    study, number = running_trial(storage_url, owner=None, heartbeat=None)
    study._storage.set_trial_user_attr(study.trials[number]._trial_id, "status", "interrupted")
    study.tell(number, state=TrialState.FAIL)  # as Optuna ends a trial the interrupt left; nothing queued
    assert retry_unqueued(study) == [number]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.user_attrs["retry_of"], t.system_attrs["fixed_params"]) for t in waiting] == [
        (number, study.trials[number].params)
    ]
    assert retry_unqueued(study) == []  # queued once: a second resume adds nothing
    failed, _ = running_trial(storage_url, owner=None, heartbeat=None)  # a trial that failed on its own
    failed.tell(failed.trials[-1].number, state=TrialState.FAIL)
    assert retry_unqueued(failed) == []


def test_a_trial_cut_short_while_drawing_its_config_is_not_queued_with_part_of_it(storage_url: str) -> None:
    """A newcomer's Ctrl-C landed while trial 2 drew its parameters: its 'retry' kept the three drawn and drew
    the batch size and rate afresh, under the old trial's name. A trial without its whole config is replaced
    by a fresh one, whether interrupted here, abandoned by a killed process, or found on resume."""
    study = optuna.create_study(storage=open_storage(storage_url), study_name="s", load_if_exists=True)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)  # one parameter of several drawn, no config stored yet
    requeue_interrupted(trial)
    assert not study.get_trials(states=(TrialState.WAITING,))
    assert "a fresh trial takes its place" in study.trials[trial.number].user_attrs["message"]
    study.tell(trial.number, state=TrialState.FAIL)
    assert retry_unqueued(study) == []  # and a resume does not queue it either

    # a queued retry cut short before it stored its config runs its queued config again, not a fresh one
    study.enqueue_trial({"x": 0.25}, user_attrs={"retry_of": 0, "retry_root": 0})
    retry = study.ask()
    retry.suggest_float("x", 0.0, 1.0)  # the queued value, no config stored yet
    requeue_interrupted(retry)
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.system_attrs["fixed_params"] == {"x": 0.25} and queued.user_attrs["retry_of"] == retry.number
    study.tell(retry.number, state=TrialState.FAIL)
    study.tell(study.ask().number, 1.0)  # the queued one runs: out of the way of the next ask

    killed, number = running_trial(storage_url, exited_process(), heartbeat=None, drawn=False)  # killed mid-draw
    assert retry_abandoned(killed, GRACE) == [number]
    assert not [t for t in killed.get_trials(states=(TrialState.WAITING,)) if t.user_attrs["retry_of"] == number]
    assert "had not drawn its config" in killed.trials[number].user_attrs["message"]
