"""Re-scoring's runs side by side: a pool of spawned processes, one per trial worker's devices.

:mod:`bstune.study._rescore` trains the best few trials again at other seeds. With several
trial workers (``parallel_trials`` or ``devices``) those runs go to a ``multiprocessing``
pool of as many processes, each plan on one worker's devices, never two on one device at
a time. Unlike trial workers, these processes report to the parent alone (nothing goes to
the storage), so a pool process whose parent is gone just exits: left to run, it trained a
whole budget on a device a resume would share.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.pool
import os
import signal
import threading
import time

from bstune._spawn import start_holding_sigint, start_method, unpack_in_child
from bstune.study._settings import StudySettings
from bstune.study._trial import TrialOutcome
from bstune.study._trial_plan import TrialPlan
from bstune.study._workers import setup_process, worker_devices, worker_threads

__all__ = ["run_plans_parallel"]


def _plan_worker_init(threads: int, log_level: int, parent: int, method: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool on Ctrl-C
    threading.Thread(target=_watch_plans, args=(parent,), name="bstune-rescore-watch", daemon=True).start()
    setup_process(os.getpid(), ("re-scoring",), threads, log_level, method)


def _watch_plans(parent: int) -> None:
    """A re-scoring worker's daemon thread: end the worker once its parent is gone (killed). Its runs report to the
    parent alone, so nothing is lost; left to run, it trained a whole budget on a device a resume would share."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:  # one line straight to stderr: a logging lock held elsewhere cannot stop the exit
            with contextlib.suppress(OSError):
                os.write(2, f"WARNING bstune: the study's process (pid {parent}) is gone: re-scoring stops\n".encode())
            os._exit(1)


def _run_plan(item: tuple[bytes, TrialPlan]) -> TrialOutcome:
    payload, plan = item
    job = unpack_in_child(payload)
    outcome: TrialOutcome = job.run(plan)
    return outcome


def run_plans_parallel(payload: bytes, plans: list[TrialPlan], settings: StudySettings) -> list[TrialOutcome]:
    """Train ``plans`` (whole budget) in spawned processes, one per worker device at a time; outcomes in order."""
    slots = worker_devices(settings)
    n = min(len(slots), len(plans))
    ctx = multiprocessing.get_context("spawn")
    placed = [(payload, plan.on_devices(slots[i % n])) for i, plan in enumerate(plans)]
    level = logging.getLogger("bstune").getEffectiveLevel()
    out: list[TrialOutcome] = []
    pools: list[multiprocessing.pool.Pool] = []  # its workers ignore SIGINT once started (their initializer)
    initargs = (worker_threads(n), level, os.getpid(), start_method())
    try:
        start_holding_sigint([lambda: pools.append(ctx.Pool(n, initializer=_plan_worker_init, initargs=initargs))])
    except BaseException:  # a Ctrl-C while it started: the pool, if it got made, goes with it
        for made in pools:
            made.terminate()
        raise
    with pools[0] as pool:
        for start in range(0, len(placed), n):  # n at a time: never two plans on one device
            out += pool.map(_run_plan, placed[start : start + n], chunksize=1)
    return out
