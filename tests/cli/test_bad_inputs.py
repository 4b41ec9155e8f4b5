"""The mistakes a newcomer makes, run through the real ``bstune`` entry point in a subprocess.

One table: the command, the exact exit status, and the words its message must contain.
Exit 2 means bad input (said in one line, no traceback); exit 1 means the work itself failed.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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

# files written into the test's folder; commands name them relative to it ({d} is the folder itself)
FILES: dict[str, str] = {
    "good.py": TINY_TASK,
    "ok.yaml": "name: s\nbatch_size: {min: 8, max: 64}\n",
    "norec.json": '{"trials": []}\n',
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
    # bstune train --param / --config: the option, the name or the file, and what is wrong with it
    Case(
        ("train", "good.py", "--batch-size", "8", "--lr", "0.1", "--max-samples", "100", "--param", "nosuch=1"),
        2,
        ("--param", "nosuch", "unknown parameter"),
    ),
    Case(
        ("train", "good.py", "--batch-size", "8", "--lr", "0.1", "--max-samples", "100", "--param", "momentum"),
        2,
        ("--param", "expected NAME=VALUE", "'momentum'"),
    ),
    Case(
        ("train", "good.py", "--batch-size", "8", "--lr", "0.1", "--max-samples", "100", "--param", "momentum=abc"),
        2,
        ("--param: momentum", "'abc'"),
    ),
    Case(
        ("train", "good.py", "--batch-size", "8", "--lr", "0.1", "--max-samples", "100", "--param", "model.width=3"),
        2,
        ("model factory raised", "width"),
    ),
    Case(("train", "good.py", "--config", "nosuch.json"), 2, ("nosuch.json", "no such file")),
    Case(("train", "good.py", "--config", "ok.yaml"), 2, ("ok.yaml", "unreadable")),
    Case(("train", "good.py", "--config", "norec.json"), 2, ("norec.json", "holds no recommended config")),
    Case(("train", "good.py", "--lr", "0.1", "--max-samples", "100"), 2, ("--batch-size", "needed", "--config")),
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
