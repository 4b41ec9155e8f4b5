"""The study's storage failing mid-study (``bstune/study/_storage.py``): one line that says why, and a study
that resumes.

A full disk is made for real, without a mount: a ``sitecustomize`` hook lowers the process's
file-size limit (``RLIMIT_FSIZE``) to 0 once the study holds two finished trials, so every
write to the database fails from then on, as on a full disk (SQLite: "disk I/O error"). Its
output goes to pipes, which the limit does not touch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from bstune.errors import UserCodeError
from bstune.study._storage import storage_failure
from tests.reliability.conftest import python_env
from tests.study.test_parallel_trials import SLOW_SCRIPT

FULL_AFTER_TWO = """
import os, resource, signal, sqlite3, threading, time


def _fill_the_disk_after_two_trials(db):
    while True:
        time.sleep(0.1)
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                (n,) = con.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            continue
        if n >= 2:
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            return


if os.environ.get("FULL_AFTER_TWO"):  # in the study's process and in each of its trial workers
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
    threading.Thread(target=_fill_the_disk_after_two_trials, args=(os.environ["FULL_AFTER_TWO"],), daemon=True).start()
"""


def test_a_storage_that_refuses_writes_is_the_storages_failure_and_the_codes_database_is_not(tmp_path: Path) -> None:
    """A reviewer's training function queried a database of its own: its sqlite3 error, wrapped as the probe's
    UserCodeError or raised through Optuna's optimize, was reported as the study's storage failing (and the
    resume command it gave could not work)."""
    db = tmp_path / "study.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    read_only = optuna.load_study(study_name="s", storage=f"sqlite:///file:{db}?mode=ro&uri=true")
    with pytest.raises(Exception) as refused:
        read_only.optimize(lambda trial: 1.0, n_trials=1)
    assert storage_failure(refused.value) == "attempt to write a readonly database (sqlite3.OperationalError)"

    def own_database(trial: optuna.Trial) -> float:
        sqlite3.connect(":memory:").execute("SELECT * FROM images")
        return 1.0

    with pytest.raises(sqlite3.OperationalError) as raised:
        optuna.create_study().optimize(own_database, n_trials=1)
    assert storage_failure(raised.value) is None
    try:
        raise UserCodeError("the probe failed in the training function") from raised.value
    except UserCodeError as exc:
        assert storage_failure(exc) is None


def test_a_journal_files_os_error_is_the_storages_and_the_codes_is_not(tmp_path: Path) -> None:
    (tmp_path / "gone").mkdir()
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "gone" / "study.log")))
    shutil.rmtree(tmp_path / "gone")  # the study's folder removed under it
    with pytest.raises(OSError) as raised:
        optuna.create_study(storage=storage)
    assert (
        storage_failure(raised.value)
        == f"No such file or directory: {tmp_path / 'gone' / 'study.log'} (FileNotFoundError)"
    )
    try:
        open(tmp_path / "gone" / "data.csv")  # noqa: SIM115 (the training code's own OSError)
    except OSError as exc:
        assert storage_failure(exc) is None


def _run(tmp_path: Path, *more: str, full_after_two: bool = False) -> subprocess.CompletedProcess[str]:
    env = python_env()
    if full_after_two:
        env |= {
            "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{env['PYTHONPATH']}",
            "FULL_AFTER_TWO": str(tmp_path / "out" / "study.db"),
        }
    args = [
        *("run", "slow.py", "--space", "slow.yaml", "--out", "out", "--mode", "baseline", "--pruner", "none"),
        *("--rescore-top", "0", "--trials", "5", "--budget-samples", "3200", "--no-progress", "--device", "cpu"),
    ]
    command = [sys.executable, "-X", "faulthandler", "-m", "bstune.cli", *args, *more]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        # once in CI a resume printed nothing for 300 s: SIGABRT makes faulthandler print every thread's stack
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"bstune {' '.join(more)} ran past 300 s; its threads when stopped:\n{err[-20_000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _trials(db: Path) -> list[tuple[Any, ...]]:
    """Each trial's number, state and what bstune recorded of how it ended and who ran it: for a failure's message."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        attrs = "SELECT group_concat(a.key || '=' || substr(a.value_json, 1, 160), '; ') FROM {} a WHERE "
        return con.execute(
            "SELECT t.number, t.state, t.datetime_start, t.datetime_complete, "
            f"({attrs.format('trial_user_attributes')} a.trial_id = t.trial_id AND a.key IN "
            "('status', 'message', 'retry_of', 'samples')), "
            f"({attrs.format('trial_system_attributes')} a.trial_id = t.trial_id) FROM trials t ORDER BY t.number"
        ).fetchall()


def _finished(db: Path) -> dict[int, float]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        query = "SELECT t.number, v.value FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id"
        return dict(con.execute(query + " WHERE t.state = 'COMPLETE'").fetchall())


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_disk_mid_study_ends_in_one_line_and_the_study_resumes(tmp_path: Path, workers: int) -> None:
    """A newcomer's disk filled mid-study: the run printed three chained tracebacks (SQLite's, SQLAlchemy's,
    Optuna's) ending in Optuna's "AssertionError: Should not reach.", one set per trial worker."""
    (tmp_path / "slow.py").write_text(SLOW_SCRIPT)
    (tmp_path / "slow.yaml").write_text("name: s\nbatch_size: {min: 16, max: 32}\n")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(FULL_AFTER_TWO)
    parallel = ("--parallel-trials", str(workers)) if workers > 1 else ()

    full = _run(tmp_path, *parallel, full_after_two=True)
    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr and len(full.stderr.splitlines()) == 1, full.stderr
    db = tmp_path / "out" / "study.db"
    assert full.stderr.startswith(f"bstune: StorageError: sqlite:///{db}: the study could not be recorded: ")
    assert full.stderr.rstrip().endswith(" --resume")
    kept = _finished(db)
    assert len(kept) >= 2

    again = _run(tmp_path, *parallel, "--resume")
    assert again.returncode == 0, again.stderr
    after = _finished(db)
    # the trials finished before: kept as they were
    assert len(after) == 5 and after.items() >= kept.items(), (full.stderr, again.stderr, _trials(db))
