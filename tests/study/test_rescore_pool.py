"""Re-scoring's pool (``bstune/study/_rescore_pool.py``): plans trained side by side in spawned processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import bstune
from bstune._spawn import pack
from bstune.study._rescore_pool import run_plans_parallel
from bstune.study._settings import StudySettings
from bstune.study._trial_plan import TrialPlan
from tests.reliability.conftest import python_env, wait_for


class WhereItRan:
    """A stand-in for a trial's job: each plan's seed, device, and the process that ran it."""

    def run(self, plan: TrialPlan) -> Any:
        return plan.config.seed, plan.config.device, os.getpid()


def test_plans_run_in_one_process_per_worker_and_come_back_in_order() -> None:
    plans = [
        TrialPlan(
            params={},
            config=bstune.TrainConfig(batch_size=8, lr=0.1, max_samples=64, seed=s),
            model_kwargs={},
            temperature=0.0,
        )
        for s in range(5)
    ]
    out = run_plans_parallel(pack(WhereItRan()), plans, StudySettings(parallel_trials=2, device="cpu"))
    assert [seed for seed, _, _ in out] == [0, 1, 2, 3, 4]
    assert {device for _, device, _ in out} == {"cpu"}
    pids = {pid for _, _, pid in out}
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids  # a worker slow to start may get no plan


_RESCORING_PARENT = """
import logging, multiprocessing, os, sys, time
from bstune._spawn import start_method
from bstune.study._rescore_pool import _plan_worker_init

if __name__ == "__main__":
    args = (1, logging.WARNING, os.getpid(), start_method())
    pool = multiprocessing.get_context("spawn").Pool(1, initializer=_plan_worker_init, initargs=args)
    print(pool.apply(os.getpid), flush=True)  # the re-scoring worker, up
    pool.apply_async(time.sleep, (120,))  # a run of a whole trial's budget
    time.sleep(120)
"""


@pytest.mark.slow
def test_re_scoring_workers_stop_when_the_studys_process_is_killed(tmp_path: Path) -> None:
    """A newcomer SIGKILLed a study while it re-scored: its two pool workers trained on for 34 s (a whole budget,
    on a device a resume would share), then printed BrokenPipeError tracebacks. Trial workers stop within 0.5 s."""
    script = tmp_path / "parent.py"
    script.write_text(_RESCORING_PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script)], env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()

    def gone() -> bool | None:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(OSError):  # a zombie of its new parent counts as gone
            if Path(f"/proc/{worker}/stat").read_text().split(")")[1].split()[0] == "Z":
                return True
        return None

    assert wait_for("the re-scoring worker to stop", gone, [], timeout=20)
