"""``bstune train --num-workers 2`` loads a generic dataset's batches in worker processes, and prints the
same learning curve as in-process loading; through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.cli_runner import ForkedCli

# a map-style dataset with a per-example transform; every fetch inside a worker leaves a file behind
TASK = """
import os
from pathlib import Path

import torch

import bstune


class Augmented(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        info = torch.utils.data.get_worker_info()
        if info is not None:
            Path(f"fetched_by_{os.getpid()}").touch()
        return torch.tanh(2 * self.x[i]).flip(0), self.y[i]


def make_task():
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    return bstune.Task(model=lambda: torch.nn.Linear(4, 2), train_data=Augmented(x[:160], y[:160]),
                       val_data=(x[160:], y[160:]), loss=torch.nn.CrossEntropyLoss(), name="augmented")
"""


def _train(cli: ForkedCli, folder: Path, workers: int) -> str:
    args = ["train", "task.py", "--batch-size", "16", "--lr", "0.2", "--max-samples", "480", "--seed", "4"]
    args += ["--num-workers", str(workers), "--out", f"out{workers}"]
    proc = cli.completed(args, folder)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.split("throughput")[0]  # the curve and the status line, without the timing


@pytest.mark.slow
def test_train_with_workers_prints_the_in_process_curve(tmp_path: Path, forked_cli: ForkedCli) -> None:
    (tmp_path / "task.py").write_text(TASK)
    inline = _train(forked_cli, tmp_path, 0)
    assert not list(tmp_path.glob("fetched_by_*"))
    loaded = _train(forked_cli, tmp_path, 2)
    assert len(list(tmp_path.glob("fetched_by_*"))) == 2  # two worker processes fetched
    assert loaded == inline and "status: completed" in loaded
    saved = json.loads((tmp_path / "out2" / "train.json").read_text())
    assert saved["config"]["num_workers"] == 2
