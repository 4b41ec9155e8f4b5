"""Progress bars of the long phases: the probe's phases and the re-scoring, on stderr, only when asked."""

from __future__ import annotations

import pytest

import bstune
from bstune.study import ProbeSettings, run_probe
from tests.study.study_runner import SPACE

QUICK_PROBE = ProbeSettings(
    lr_steps=12, train_samples=1600, measure_samples=2000, throughput_steps=2, throughput_batches=(8, 64)
)
PROBE_PHASES = (
    "probe: LR range test",
    "probe: B_simple trajectory",
    "probe: B_simple measurement",
    "probe: throughput",
)


def _probe(task: bstune.Task, progress: bool) -> None:
    run_probe(task, QUICK_PROBE, batch_min=4, batch_max=128, lr_min=1e-3, lr_max=3.0, progress=progress)


def test_the_probe_shows_each_phase_only_when_asked(blob_task: bstune.Task, capsys: pytest.CaptureFixture[str]) -> None:
    _probe(blob_task, progress=True)
    err = capsys.readouterr().err
    for phase in PROBE_PHASES:
        assert phase in err
    assert "12/12" in err  # the LR range test counts its steps
    _probe(blob_task, progress=False)
    err = capsys.readouterr().err
    assert not any(phase in err for phase in PROBE_PHASES) and "%|" not in err


def test_a_study_shows_the_re_scoring(blob_task: bstune.Task, capsys: pytest.CaptureFixture[str]) -> None:
    kw = dict(n_trials=2, budget_samples=1000, n_evals=2, probe=QUICK_PROBE, rescore_top=1, rescore_seeds=2)
    bstune.Study(blob_task, SPACE, mode="baseline", progress=True, **kw).run()  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "re-scoring" in err and "2/2" in err  # one candidate at two more seeds
    # the trials' bar counts trials and names no "best trial": re-scoring may recommend another than the best value's
    assert "trials: 100%" in err and "2/2 [" in err and "Best trial" not in err
    bstune.Study(blob_task, SPACE, mode="baseline", progress=False, **kw).run()  # type: ignore[arg-type]
    assert "re-scoring" not in capsys.readouterr().err
