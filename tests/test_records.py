"""The records' vocabulary: a trial's status is a :class:`TrialStatus`, stored as its plain string."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import bstune
from bstune.records import ProbeResult, TrialRecord, TrialStatus, clean_json
from bstune.study import StudyResult
from bstune.study._status import trial_status
from bstune.training import RunStatus
from tests.study.study_runner import SPACE

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits_report" / "result.json"


def _record(status: TrialStatus | str) -> TrialRecord:
    return TrialRecord(
        number=0, status=status, batch_size=8, lr=0.1, temperature=0.0125, value=0.5, samples=100, params={}, config={}
    )


def test_a_status_equals_formats_and_stores_as_its_plain_string() -> None:
    record = _record(TrialStatus.OOM)
    assert record.status == "oom" and f"{record.status}|{record.status:>5}" == "oom|  oom"
    data = record.to_dict()
    assert type(data["status"]) is str and data["status"] == "oom"  # a store holds the plain string
    assert json.loads(json.dumps(data))["status"] == "oom"
    assert type(clean_json({"s": [TrialStatus.PRUNED]})["s"][0]) is str


def test_a_plain_string_is_read_as_its_member() -> None:
    assert _record("pruned").status is TrialStatus.PRUNED
    assert TrialRecord.from_dict(_record(TrialStatus.FAILED).to_dict()).status is TrialStatus.FAILED


def test_a_result_written_before_the_enum_reads_to_members_and_writes_its_trials_back_unchanged() -> None:
    stored = json.loads(SAMPLE.read_text())
    result = StudyResult.from_dict(stored)
    assert {type(t.status) for t in result.trials} == {TrialStatus}
    assert [t.status for t in result.trials] == [t["status"] for t in stored["trials"]]
    written = json.loads(json.dumps(result.to_dict()))["trials"]
    assert [{k: t[k] for k in old} for t, old in zip(written, stored["trials"], strict=True)] == stored["trials"]


def test_every_run_status_has_one_trial_status() -> None:
    assert {r: trial_status(r) for r in RunStatus} == {
        RunStatus.COMPLETED: TrialStatus.COMPLETED,
        RunStatus.DIVERGED: TrialStatus.DIVERGED,
        RunStatus.STOPPED: TrialStatus.PRUNED,
        RunStatus.OOM: TrialStatus.OOM,
    }


def test_a_study_returns_members_and_stores_plain_strings(blob_task: bstune.Task) -> None:
    study = bstune.Study(
        blob_task, SPACE, n_trials=2, budget_samples=1200, mode="baseline", rescore_top=0, seed=0, progress=False
    )
    result = study.run()
    assert result.trials and {type(t.status) for t in result.trials} == {TrialStatus}
    assert result.optuna_study is not None
    assert {type(t.user_attrs["status"]) for t in result.optuna_study.trials} == {str}


def test_a_probe_result_keeps_its_trial_run_and_one_written_before_it_loads_without() -> None:
    stored = json.loads(SAMPLE.read_text())["probe"]
    assert "run" not in stored  # written before the probe's run was kept
    old = ProbeResult.from_dict(stored)
    assert old.run is None
    run = {"batch_size": 64, "lr": 0.1, "seed": 0, "samples": 3008, "steps": 47, "status": "completed",
           "message": "", "throughput": 1e4, "history": [{"milestone": 3000, "samples": 3008, "val_loss": 0.5}],
           "config": {"batch_size": 64, "max_samples": 3000}}  # fmt: skip
    probe = dataclasses.replace(old, run=run)
    data = json.loads(json.dumps(probe.to_dict()))
    assert data["run"] == run and ProbeResult.from_dict(data) == probe


def test_a_search_after_a_probe_stays_within_memory_and_the_training_set_it_saw() -> None:
    """`bstune probe` of a loop over 353 examples printed the search as 8..1024 where `bstune run` searched 8..353:
    both now take the cap from here."""
    probe = ProbeResult.from_dict(json.loads(SAMPLE.read_text())["probe"])
    assert dataclasses.replace(probe, batch_ceiling=None, n_train=None).search_cap(1024) == 1024
    assert dataclasses.replace(probe, batch_ceiling=None, n_train=353).search_cap(1024) == 353
    assert dataclasses.replace(probe, batch_ceiling=256, n_train=353).search_cap(1024) == 256
    assert dataclasses.replace(probe, batch_ceiling=None, n_train=5000).search_cap(1024) == 1024
