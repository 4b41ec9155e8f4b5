"""One study process for the crash and concurrency tests.

    python -m tests.reliability.worker STORAGE N_TRIALS OUT_JSON

Runs a study of small MLPs on Gaussian blobs (trials of a second or two) on STORAGE
until N_TRIALS have finished (across every process on that storage), then writes to
OUT_JSON the trials this process ran to their end: ``{number: [state, value]}``, told
apart from other processes' by the owner that bstune records on each trial, and to
OUT_JSON.running how many of the study's trials were still running when its run returned, and to
OUT_JSON.probe whether it ran the probe ("ran"), took one stored ("stored"), or had none ("none"). With
BSTUNE_TEST_FUNCTION=1 the study tunes the same problem as a user's training function
(:func:`train_blobs`) instead of the task; with BSTUNE_TEST_MODE=prior it probes first. With
BSTUNE_TEST_HOLD=PATH it stops inside the first trial that reports an evaluation once three trials have
completed: it writes that trial's number to PATH and sleeps there, for a test to kill it at a known point.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState
from torch.nn import functional as F

import bstune
from bstune.study._liveness import OWNER_KEY
from tests.conftest import make_classification, small_mlp
from tests.study.study_runner import make_task

SPACE = {"name": "blobs", "batch_size": {"min": 16, "max": 128}, "lr": {"min": 1e-3, "max": 3.0}}
NAME = "bstune-blobs"


def train_blobs(ctx: bstune.TrialContext) -> None:
    """The blobs task's problem as a user's own training loop (the trainer's steps, by hand)."""
    x, y = make_classification(n=520)
    data, vx, vy = torch.utils.data.TensorDataset(x[:400], y[:400]), x[400:], y[400:]
    model = small_mlp().to(ctx.device)
    opt = ctx.make_optimizer(model.parameters())
    sched = ctx.lr_scheduler(opt)
    noise = ctx.noise_tracker(model)  # B_simple for the probe (the prior mode); idle in a trial
    for xb, yb in ctx.loader(data):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        noise.observe()
        opt.step()
        sched.step()
        ctx.step(loss)
        if ctx.at_milestone():
            with torch.no_grad():
                ctx.report(val_loss=F.cross_entropy(model(vx), vy))


def make_study(
    storage: str,
    n_trials: int,
    budget_samples: int | None = None,
    function: bool | None = None,
    mode: str | None = None,
) -> bstune.Study:
    """The study every worker runs: baseline mode (no probe; ``mode``, or BSTUNE_TEST_MODE in a worker
    process), no pruning, 4000 samples a trial (``budget_samples``, or BSTUNE_TEST_BUDGET in a worker
    process), of the blobs task or, with ``function`` (or BSTUNE_TEST_FUNCTION=1 in a worker process),
    of :func:`train_blobs`."""
    budget = budget_samples or int(os.environ.get("BSTUNE_TEST_BUDGET", "4000"))
    if function is None:
        function = os.environ.get("BSTUNE_TEST_FUNCTION") == "1"
    return bstune.Study(
        train_blobs if function else make_task(),
        SPACE,
        study_name=NAME,
        n_trials=n_trials,
        budget_samples=budget,
        seed=0,
        storage=storage,
        mode=mode or os.environ.get("BSTUNE_TEST_MODE", "baseline"),
        pruner="none",
        n_evals=4,
        progress=False,
    )


def wait_at_gate() -> None:
    """With BSTUNE_TEST_GATE set: say ready (``<gate>.ready``), then wait until the gate file exists."""
    gate = os.environ.get("BSTUNE_TEST_GATE")
    if not gate:
        return
    Path(gate + ".ready").touch()
    deadline = time.monotonic() + 600
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"worker {os.getpid()}: gate {gate} never opened")
        time.sleep(0.05)


def hold_inside_a_trial(hold: Path) -> None:
    """Make the first evaluation reported once three trials have completed stop there: the trial's number
    goes to ``hold`` and the process sleeps inside the trial (its heartbeat still running) until killed.

    A test that polled the storage for a running trial and then killed the process raced the trial's end:
    a CI run's kill landed between one trial's end and the next one's start."""
    report = optuna.trial.Trial.report

    def held(trial: optuna.trial.Trial, value: float, step: int) -> None:
        report(trial, value, step)
        if len(trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 3:
            hold.with_suffix(".tmp").write_text(str(trial.number))
            hold.with_suffix(".tmp").replace(hold)  # whole, for a reader polling it
            time.sleep(600)
            raise SystemExit(f"worker {os.getpid()}: held in trial {trial.number} and never killed")

    optuna.trial.Trial.report = held  # type: ignore[method-assign]


def main(storage: str, n_trials: int, out: Path) -> None:
    logging.basicConfig(level=logging.WARNING, format=f"worker {os.getpid()}: %(levelname)s %(name)s: %(message)s")
    study = make_study(storage, n_trials)  # imports done and the task built: only the study is left to open
    taken: list[str] = []  # whether this process took a stored probe (the prior mode)

    class Said(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "probe taken from" in record.getMessage():
                taken.append("stored")

    logging.getLogger("bstune.study._study").addHandler(Said(logging.INFO))
    logging.getLogger("bstune.study._study").setLevel(logging.INFO)
    if hold := os.environ.get("BSTUNE_TEST_HOLD"):
        hold_inside_a_trial(Path(hold))
    wait_at_gate()
    result = study.run()
    Path(f"{out}.probe").write_text("none" if result.probe is None else taken[0] if taken else "ran")
    assert result.optuna_study is not None
    mine = {
        t.number: [t.state.name, t.value]
        for t in result.optuna_study.get_trials()
        if t.system_attrs.get(OWNER_KEY, {}).get("pid") == os.getpid() and t.state != TrialState.RUNNING
    }
    out.write_text(json.dumps(mine))
    # trials still running (another process's) when this run returned: it should have waited for them
    Path(f"{out}.running").write_text(str(sum(t.state == TrialState.RUNNING for t in result.optuna_study.get_trials())))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
