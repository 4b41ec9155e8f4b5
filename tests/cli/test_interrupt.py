"""Ctrl-C on a real ``bstune run``: a real SIGINT, then ``--resume``.

The README promises that a killed study keeps every finished trial and runs the one that
was running again, once. Ctrl-C must keep the same promise and say so in one line: what
was kept and the exact command that continues.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from bstune.study import open_storage
from bstune.study._liveness import count_finished
from tests.reliability.conftest import python_env, wait_for
from tests.reliability.test_crash_and_concurrency import in_trial

pytestmark = pytest.mark.slow

# a trial of 3,200 samples at batch sizes 16..32 is 100..200 steps of at least 10 ms: seconds, whatever the machine
SLOW_TASK = """
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
ARGS = [
    *("run", "slow.py", "--space", "slow.yaml", "--out", "out", "--mode", "baseline", "--pruner", "none"),
    *("--rescore-top", "0", "--trials", "3", "--budget-samples", "3200", "--no-progress"),
]


def stored(folder: Path) -> list[FrozenTrial]:
    """The trials in ``folder/out/study.db`` now; [] before the study exists."""
    db = folder / "out" / "study.db"
    if not db.exists():
        return []  # opening it would create it under the run's feet
    # the file exists before its schema: opening it then makes two processes create the schema at once, and
    # one fails (alembic_version's UNIQUE constraint). Read-only, ask whether the run has finished creating it
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            if not con.execute("SELECT version_num FROM alembic_version").fetchall():
                return []
    except sqlite3.Error:
        return []
    try:
        return optuna.load_study(
            study_name="bstune-slow", storage=open_storage(f"sqlite:///{folder}/out/study.db")
        ).get_trials()
    except KeyError:
        return []


def stopped_mid_trial(folder: Path, signum: int) -> tuple[subprocess.Popen[bytes], FrozenTrial]:
    """``bstune run`` of the slow task in ``folder``, sent ``signum`` once a trial has finished and the next one
    runs; returns the process (stderr piped) and that running trial."""
    (folder / "slow.py").write_text(SLOW_TASK)
    (folder / "slow.yaml").write_text("name: s\nbatch_size: {min: 16, max: 32}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bstune.cli", *ARGS], cwd=folder, env=python_env(), stderr=subprocess.PIPE
    )

    def interruptible() -> FrozenTrial | None:
        trials = stored(folder)
        if not any(t.state == TrialState.COMPLETE for t in trials):
            return None
        return in_trial(trials, proc.pid)

    victim = wait_for("a trial finished and the next one running", interruptible, [proc])
    proc.send_signal(signum)
    return proc, victim


def test_ctrl_c_keeps_finished_trials_says_how_to_continue_and_resume_reruns_the_interrupted_one(
    tmp_path: Path,
) -> None:
    proc, victim = stopped_mid_trial(tmp_path, signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    err = proc.stderr.read().decode().strip()  # type: ignore[union-attr]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    kept = {t.number: t for t in stored(tmp_path)}
    finished = sorted(n for n, t in kept.items() if t.state == TrialState.COMPLETE)
    command = shlex.join(["bstune", *ARGS, "--resume"])
    assert err.startswith(f"bstune: interrupted; kept {len(finished)} finished trial"), err
    assert f"in {tmp_path}/out/study.db; trial {victim.number} runs again; " in err
    assert err.endswith(f"continue with: {command}"), err
    stopped = kept[victim.number]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["status"] == "interrupted"

    resumed = subprocess.run(
        [sys.executable, "-m", "bstune.cli", *ARGS, "--resume"],
        cwd=tmp_path,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    trials = {t.number: t for t in stored(tmp_path)}
    for number in finished:  # kept as they were, not run again
        assert trials[number].value == kept[number].value
        assert not [t for t in trials.values() if t.user_attrs.get("retry_of") == number]
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params  # the interrupted config, once more
    assert trials[victim.number].user_attrs["status"] == "interrupted"  # not a failed trial counted toward --trials
    assert not [t for t in trials.values() if not t.state.is_finished()]
    study = optuna.load_study(study_name="bstune-slow", storage=open_storage(f"sqlite:///{tmp_path}/out/study.db"))
    assert count_finished(study) == 3
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    statuses = sorted(t["status"] for t in result["trials"])
    assert statuses == ["completed", "completed", "completed", "interrupted"]
    (cut,) = [t for t in result["trials"] if t["status"] == "interrupted"]  # says what became of it, not "will run"
    assert cut["message"] == f"interrupted; its config ran again as trial {retry.number}"
    assert "3 trials (and 1 interrupted)" in resumed.stdout


def test_sigterm_stops_the_study_as_ctrl_c_does_and_exits_143(tmp_path: Path) -> None:
    """`timeout`, Slurm and `docker stop` send SIGTERM: the run died with 143 and no word on what was kept or how
    to continue (the stored trials were fine)."""
    proc, victim = stopped_mid_trial(tmp_path, signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    err = proc.stderr.read().decode().strip()  # type: ignore[union-attr]
    assert "Traceback" not in err and err.startswith("bstune: interrupted; kept "), err
    assert err.endswith(f"continue with: {shlex.join(['bstune', *ARGS, '--resume'])}"), err
    stopped = {t.number: t for t in stored(tmp_path)}[victim.number]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["status"] == "interrupted"


@pytest.mark.parametrize("press", ["raised", "signal"])
def test_ctrl_c_while_the_commands_load_says_interrupted_without_a_traceback(
    press: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands import PyTorch and Optuna, seconds on a slow machine: a Ctrl-C then is answered as one later
    is, not with Python's traceback from inside an import. A real press (``signal``) is held until the import
    ends: inside an import's C extension it is no KeyboardInterrupt (NumPy's failed with ImportError, "cannot
    load module more than once per process", a traceback and exit 1: CI, in the test below)."""
    import bstune
    from bstune import cli

    class CtrlC:  # the press arrives as the commands' import begins
        def find_spec(self, name: str, *args: object) -> None:
            if name == "bstune._commands":
                if press == "raised":
                    raise KeyboardInterrupt
                signal.raise_signal(signal.SIGINT)
            return None

    monkeypatch.delitem(sys.modules, "bstune._commands", raising=False)
    monkeypatch.delattr(bstune, "_commands", raising=False)
    monkeypatch.setattr(sys, "meta_path", [CtrlC(), *sys.meta_path])
    assert cli.main(["report", "nowhere"]) == 130
    said = "bstune: Ctrl-C: stopping once the imports finish (press it again to stop now)\n"
    assert capsys.readouterr().err == (said if press == "signal" else "") + "bstune: interrupted\n"
    assert ("bstune._commands" in sys.modules) == (press == "signal")  # held: imported whole, then answered
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_real_ctrl_c_in_the_first_second_leaves_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(SLOW_TASK)
    (tmp_path / "slow.yaml").write_text("name: s\nbatch_size: {min: 16, max: 32}\n")
    # the console script's own start: bstune.cli imported, then main(); SIGINT as soon as Python is up, however
    # loaded the machine (a signal before the interpreter installs its handler would kill it outright)
    code = "import sys; from bstune.cli import main; print('up', flush=True); sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *ARGS], cwd=tmp_path, env=python_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    time.sleep(0.2)  # into main(), which answers Ctrl-C from its first line: the imports take seconds
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err, err.decode()
