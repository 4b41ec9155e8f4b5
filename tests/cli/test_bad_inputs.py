"""The mistakes a newcomer makes, run through the real ``bstune`` entry point in a subprocess.

One table: the command, the exact exit status, and the words its message must contain.
Exit 2 means bad input (said in one line, no traceback); exit 1 means the work itself failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from bstune.space import SearchSpace
from tests.reliability.conftest import python_env

TINY_TASK = """
import torch
import bstune


def make_task():
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    return bstune.Task(model=lambda: torch.nn.Linear(4, 2), train_data=(x[:160], y[:160]),
                       val_data=(x[160:], y[160:]), loss=torch.nn.CrossEntropyLoss(), name="tiny")
"""


def stored_study(space_yaml: str, budget_samples: int) -> str:
    """An Optuna journal holding study ``bstune-tiny`` as ``run good.py --space SPACE --mode baseline
    --budget-samples BUDGET_SAMPLES`` stores it: its settings, no trials yet."""
    space = SearchSpace.coerce(yaml.safe_load(space_yaml)).to_dict()
    settings = {"mode": "baseline", "budget_samples": budget_samples, "seed": 0, "n_evals": 9}
    settings |= {"objective": "val_loss", "space": space, "task": "tiny", "n_train": 160}
    ops = [
        {"op_code": 0, "worker_id": "test", "study_name": "bstune-tiny", "directions": [1]},
        {"op_code": 2, "worker_id": "test", "study_id": 0, "user_attr": {"bstune_settings": settings}},
    ]
    return "".join(json.dumps(op) + "\n" for op in ops)


# files written into the test's folder; commands name them relative to it ({d} is the folder itself)
FILES: dict[str, str] = {
    "good.py": TINY_TASK,
    "ok.yaml": "name: s\nbatch_size: {min: 8, max: 64}\n",
    "keep/notes.txt": "a folder with something in it before the run\n",
    "old.log": stored_study("name: s\nbatch_size: {min: 8, max: 64}\n", 30_000),  # the study ok.yaml made
}


@dataclass(frozen=True)
class Case:
    """One bad input: ``bstune *args`` must exit with ``code`` and say every one of ``words``."""

    args: tuple[str, ...]
    code: int
    words: tuple[str, ...]
    one_line: bool = True  # the whole of stderr is one line
    untouched: tuple[str, ...] = field(default=())  # files (relative to the folder) that must not change
    absent: tuple[str, ...] = field(default=())  # paths (relative to the folder) that must not exist afterwards


CASES: list[Case] = [
    Case(("run", "good.py", "--space", "nosuch.yaml", "--out", "out"), 2, ("nosuch.yaml", "no such file")),
    # --device: a name torch does not know, or a device this machine lacks, for every command that takes it
    *(
        Case(
            (*cmd, "--device", "gpu", "--out", "out"),
            2,
            ("bstune: error: argument --device: 'gpu' is not a torch device; use cpu, cuda, cuda:N or mps",),
            absent=("out",),
        )
        for cmd in (
            ("run", "good.py", "--space", "ok.yaml"),
            ("run", "good.py", "--space", "ok.yaml", "--backend", "ray"),  # only the name is checked: no Ray started
            ("probe", "good.py", "--space", "ok.yaml"),
            ("noise", "good.py"),
            ("train", "good.py", "--batch-size", "8", "--lr", "0.1", "--max-samples", "100"),
        )
    ),
    Case(
        ("train", "good.py", "--batch-size", "8", "--lr", "0.1", "--max-samples", "100", "--device", "cuda:99"),
        2,
        ("argument --device: cuda:99 is not available on this machine",),
    ),
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--device", "meta"), 2, ("'meta' is not a device bstune can train on",)
    ),
    # a failed start leaves nothing behind: not the folders it would have made, not an empty study.db or journal
    Case(("run", "good.py", "--space", "nosuch.yaml", "--out", "new/out"), 2, ("nosuch.yaml",), absent=("new",)),
    Case(
        ("run", "good.py", "--space", "nosuch.yaml", "--storage", "logs/s.log"), 2, ("nosuch.yaml",), absent=("logs",)
    ),
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--out", "fresh", "--resume"),
        2,
        ("holds no study",),
        absent=("fresh",),
    ),
    # ... and never removes what was there before
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--out", "keep", "--resume"),
        2,
        ("holds no study 'bstune-tiny' to resume",),
        untouched=("keep/notes.txt",),
        absent=("keep/study.db",),
    ),
    # a resume with other settings names each one, with the stored value and the new one
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--storage", "old.log", "--resume", "--mode", "baseline"),
        2,
        ("different settings: budget_samples: the stored study used 30000, this run asks 300000; use the same",),
    ),
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--storage", "old.log", "--resume", "--budget-samples", "30000"),
        2,
        ('mode: the stored study used "baseline", this run asks "prior"',),
    ),
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[" ".join(c.args)[:60] for c in CASES])
def test_bad_input_gets_its_exit_code_and_message(folder: Path, case: Case) -> None:
    before = {name: (folder / name).read_bytes() for name in case.untouched}
    proc = subprocess.run(
        [sys.executable, "-m", "bstune.cli", *(a.format(d=folder) for a in case.args), "--no-progress"]
        if case.args[0] == "run"
        else [sys.executable, "-m", "bstune.cli", *(a.format(d=folder) for a in case.args)],
        cwd=folder,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    err = proc.stderr.strip()
    assert proc.returncode == case.code, f"exit {proc.returncode}\n{proc.stdout}\n{err}"
    for word in case.words:
        assert word.format(d=folder) in err, f"{word!r} not in:\n{err}"
    assert "Traceback" not in err
    if case.one_line:
        assert len(err.splitlines()) == 1, err
    for name, data in before.items():
        assert (folder / name).read_bytes() == data, f"{name} was changed"
    for name in case.absent:
        assert not (folder / name).exists(), f"{name} was left behind"
