"""The mistakes a newcomer makes, run through the real ``bstune`` entry point, each in a process of its own.

One table: the command, the exact exit status, and the words its message must contain.
Exit 2 means bad input (said in one line, no traceback); exit 1 means the work itself failed.
Each command runs in a fork of one process that imported the command line once
(``tests/cli/forked_cli.py``), which spares the table's fifty commands their imports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from bstune.space import SearchSpace
from tests.cli.cli_runner import ForkedCli

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
    "big.yaml": "name: s\nbatch_size: {min: 128, max: 256}\n",
    "hidden.yaml": "name: s\nbatch_size: {min: 8, max: 64}\nparams:\n  model.hidden: {type: int, low: 8, high: 64}\n",
    "numpy_list.py": TINY_TASK.replace(
        "train_data=(x[:160], y[:160])", "train_data=(x[:160].numpy(), y[:160].tolist())"
    ),
    "numpy_ok.py": TINY_TASK.replace(
        "train_data=(x[:160], y[:160])", "train_data=(x[:160].double().numpy(), y[:160].numpy())"
    ),
    "mse.py": TINY_TASK.replace("torch.nn.Linear(4, 2)", "torch.nn.Linear(4, 1)")
    .replace("y = (x[:, 0] > 0).long()", "y = x[:, 0] * 2")
    .replace("torch.nn.CrossEntropyLoss()", "torch.nn.MSELoss()"),
    "label7.py": TINY_TASK.replace("y = (x[:, 0] > 0).long()", "y = (x[:, 0] > 0).long()\n    y[50] = 7"),
    # the same label, in a Dataset the Task cannot scan cheaply: found only when the data is used
    "label7_dataset.py": TINY_TASK.replace("y = (x[:, 0] > 0).long()", "y = (x[:, 0] > 0).long()\n    y[50] = 7")
    .replace("train_data=(x[:160], y[:160])", "train_data=Pairs(x[:160], y[:160])")
    .replace(
        "def make_task():",
        "class Pairs(torch.utils.data.Dataset):\n"
        "    def __init__(self, x, y):\n        self.x, self.y = x, y\n\n"
        "    def __len__(self):\n        return len(self.x)\n\n"
        "    def __getitem__(self, i):\n        return self.x[i], self.y[i]\n\n\n"
        "def make_task():",
    ),
    "norec.json": '{"trials": []}\n',
    "keep/notes.txt": "a folder with something in it before the run\n",
    "old.log": stored_study("name: s\nbatch_size: {min: 8, max: 64}\n", 30_000),  # the study ok.yaml made
    "notdb.db": "not a database at all",  # SQLAlchemy's error adds a 'Background on this error' line
    "other.log": '{not json, but another program\'s log\n{"event": "start"}\n',  # given as --storage by mistake
    "decay.yaml": (
        # lr.max far past where training blows up: the range test finds a ceiling (else it warns that lr.max is one)
        "name: s\nbatch_size: {min: 8, max: 64}\nlr: {min: 1.0e-3, max: 1.0e+3}\n"
        "params:\n  weight_decay: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}\n"
    ),
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
    *(  # a forgotten --backend ray ran the study in this process without a word
        Case(
            ("run", "good.py", "--space", "ok.yaml", option, value, "--out", "out"),
            2,
            (option, "is a setting of the Ray backend; add --backend ray"),
            absent=("out",),
        )
        for option, value in (("--address", "127.0.0.1:6379"), ("--resources", "cpu=1"), ("--max-concurrent", "2"))
    ),
    Case(
        ("report", "study", "--target-metric", "val_acc"),
        2,
        ("--target-metric", "no metric 'val_acc'", "known metrics: train_accuracy, train_loss, val_accuracy"),
        untouched=("study/report.json", "study/report.md", "study/report.html"),
    ),
    Case(
        ("report", "study", "--target-metric", "val_score"),  # an older result.json stored no directions
        2,
        ("--target-metric", "whether 'val_score' is minimized or maximized", "--target-direction maximize"),
        untouched=("study/report.json", "study/report.md", "study/report.html"),
    ),
    # a budget whose trials at the largest batch size take fewer steps than there are milestones
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--budget-samples", "100"),
        2,
        (
            "budget_samples",
            "100 samples",
            "largest batch size (64) 2 optimizer step(s) for its 9 milestones",
            "at least 513",
        ),
    ),
    # a probe dearer than every trial together: said once, with the numbers, and the study goes on (a space
    # that searches weight decay too: the probe's run, at the default decay, is no trial and stays its cost)
    Case(
        ("run", "good.py", "--space", "decay.yaml", "--budget-samples", "600", "--trials", "1", "--rescore-top", "0"),
        0,
        ("the probe will train on at least 968 samples", "1 trials x budget_samples 600 = 600", "baseline"),
    ),
    Case(
        ("run", "good.py", "--space", "hidden.yaml"),
        2,
        (
            "hidden.yaml: params.model.hidden",
            "<lambda>() (good.py:",
            "takes no keyword `hidden`",
            "add a `hidden` keyword to the factory or remove the param from the space",
        ),
    ),
    Case(
        ("train", "numpy_list.py", "--batch-size", "8", "--lr", "0.1", "--max-samples", "64"),
        2,
        ("train_data", "got a tuple of (ndarray, list)", "numpy arrays"),
    ),
    Case(("train", "numpy_ok.py", "--batch-size", "8", "--lr", "0.1", "--max-samples", "64"), 0, (), one_line=False),
    Case(("report", "nosuchdir"), 2, ("nosuchdir", "no such folder")),
    # a newcomer's nan was taken, and the report said "steps_to_target: target: must be finite, got nan"
    Case(
        ("report", "study", "--target-value", "nan"),
        2,
        ("--target-value", "must be a finite number, got nan"),
        untouched=("study/report.json", "study/report.md", "study/report.html"),
    ),
    Case(("report", "old.log"), 2, ("old.log: is a file (a study's storage?), not the --out folder",)),
    Case(  # an --out that cannot be made: said before the training, not a traceback after it
        ("train", "good.py", "--batch-size", "8", "--lr", "0.1", "--max-samples", "64", "--out", "good.py/sub"),
        2,
        ("--out", "cannot make the folder 'good.py/sub'"),
    ),
    Case(
        ("train", "mse.py", "--batch-size", "8", "--lr", "0.1", "--max-samples", "64"),
        2,
        ("loss", "outputs of shape (2, 1) and targets of shape (2,) broadcast to (2, 2)", "squeeze"),
    ),
    Case(("run", "label7.py", "--space", "ok.yaml"), 2, ("train_data", "example 50 has label 7", "2 classes")),
    Case(
        ("run", "label7_dataset.py", "--space", "ok.yaml", "--budget-samples", "600", "--trials", "2"),
        1,
        ("UserCodeError: the probe failed", "Target 7 is out of bounds", "run with -v to see its traceback"),
        one_line=False,  # the warning that the probe costs more than the trials comes first
    ),
    Case(
        (
            "run",
            "label7_dataset.py",
            "--space",
            "ok.yaml",
            "--budget-samples",
            "600",
            "--trials",
            "2",
            "--mode",
            "baseline",
            "--out",
            "out",
        ),
        1,
        (
            "trial 0 failed: IndexError: Target 7",
            "trial 1 failed: IndexError: Target 7",
            "none of the 2 trials",
            "sqlite:///{d}/out/study.db",
            "run with -v to see its traceback",
        ),
        one_line=False,  # one line per failed trial, then the study's
    ),
    Case(
        ("train", "label7_dataset.py", "--batch-size", "16", "--lr", "0.1", "--max-samples", "320"),
        1,
        ("UserCodeError: the training run failed", "Target 7 is out of bounds", "run with -v"),
    ),
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
    # ... nor a study.db whose only trial failed on the settings (the first trial of a baseline study found the space's
    # smallest batch larger than a training function's data): the corrected command would be refused
    Case(
        ("run", "fn_only.py", "--space", "big.yaml", "--mode", "baseline", "--trials", "2", "--out", "big"),
        2,
        ("batch_size.min", "larger than the training set (64 examples)"),
        absent=("big",),
    ),
    # ... and never removes what was there before
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--out", "keep", "--resume"),
        2,
        ("holds no study 'bstune-tiny' to resume",),
        untouched=("keep/notes.txt",),
        absent=("keep/study.db",),
    ),
    # a file of another program given as the journal: it was appended to, then a JSON traceback
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--storage", "other.log", "--out", "out"),
        2,
        ("storage: 'other.log' holds something other than an Optuna journal", "{{not json, but another"),
        untouched=("other.log",),
        absent=("out",),
    ),
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--storage", "sqlite:///notdb.db", "--out", "out"),
        2,
        ("storage: cannot open 'sqlite:///notdb.db': DatabaseError", "file is not a database"),
        untouched=("notdb.db",),
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
    Case(
        ("train", "good.py", "--config", "badwarm.json"),
        2,
        ("badwarm.json: warmup_samples: must be a non-negative integer, got -5",),
    ),
    # a script with nothing to tune, and one with only a training function where a Task is needed
    Case(
        ("run", "nothing.py", "--space", "ok.yaml"),
        2,
        ("nothing.py", "defines neither make_task()", "nor a training function train(ctx)"),
    ),
    *(
        Case(
            (command, "fn_only.py", *args),
            2,
            (
                "fn_only.py",
                "a training function train(ctx) and no Task",
                f"bstune {command} needs a Task",
                "`bstune run` tunes the training function",
            ),
        )
        for command, args in (("noise", ()), ("train", ("--batch-size", "8", "--lr", "0.1", "--max-samples", "100")))
    ),
    Case(
        ("train", "good.py", "--batch-size", "8", "--lr", "0.1", "--max-samples", "64", "--num-workers", "-1"),
        2,
        ("TrainConfig: num_workers", "must be a non-negative integer, got -1"),
    ),
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--num-workers", "-2", "--out", "out"),
        2,
        ("Study: num_workers", "must be a non-negative integer, got -2"),
        absent=("out/study.db",),
    ),
    # parallel trials (issue 16 part 4): bad counts and device lists are refused before the storage is made
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--parallel-trials", "0", "--out", "out"),
        2,
        ("Study: parallel_trials", "must be a positive integer, got 0"),
        absent=("out",),
    ),
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--devices", "all", "--out", "out"),  # these machines have no GPU
        2,
        ("Study: devices", "torch sees none on this machine", "parallel_trials"),
        absent=("out",),
    ),
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--devices", "cpu,cpu", "--out", "out"),
        2,
        ("Study: devices", "'cpu' is listed twice"),
        absent=("out",),
    ),
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--devices", "cpu", "--parallel-trials", "3", "--out", "out"),
        2,
        ("Study: parallel_trials", "one trial per device, 1 at once (cpu)", "leave it unset"),
        absent=("out",),
    ),
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--parallel-trials", "2", "--backend", "ray", "--out", "out"),
        2,
        ("Study: parallel_trials", "the embedded backend's", "max_concurrent"),
        absent=("out",),
    ),
    # data-parallel trials: a count that is not one, or devices that do not split into trials of it
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--devices-per-trial", "0", "--out", "out"),
        2,
        ("Study: devices_per_trial", "must be a positive integer, got 0"),
        absent=("out",),
    ),
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--devices", "cpu", "--devices-per-trial", "2", "--out", "out"),
        2,
        ("Study: devices_per_trial", "do not split into trials of 2"),
        absent=("out",),
    ),
    Case(("crit", "good.py", "nosuch"), 2, ("nosuch", "no such folder; give the --out folder of `bstune run`")),
    Case(
        ("crit", "fn_only.py", "study"),
        2,
        ("fn_only.py", "make_task() -> bstune.Task"),
        untouched=("study/result.json", "study/report.md"),
        absent=("study/critical.json",),
    ),
    Case(  # study/result.json's trial holds no configuration (an older result): nothing to measure from
        ("crit", "good.py", "study"),
        2,
        ("critical_batch", "no configuration for its best trial"),
        untouched=("study/result.json", "study/report.md"),
        absent=("study/critical.json",),
    ),
    Case(
        ("run", "good.py", "--space", "ok.yaml", "--critical-batch", "direct", "--out", "out"),
        2,
        ("--critical-batch", "invalid choice: 'direct'"),
        one_line=False,  # argparse prints its usage first
        absent=("out",),
    ),
]


# study/: a finished study (written before result.json stored directions) with its good report
_HISTORY = [
    {"samples": 100 * k, "step": 10 * k, "lr": 0.1, "train_loss": 1 / k, "val_loss": 1.1 / k, "gap": 0.1 / k,
     "train_accuracy": 1 - 0.5 / k, "val_accuracy": 1 - 0.6 / k, "val_score": k}
    for k in (1, 2, 3)
]  # fmt: skip
FILES["study/result.json"] = json.dumps(
    {
        "study_name": "s", "mode": "baseline", "objective": "val_loss", "direction": "minimize",
        "best_config": {"batch_size": 8, "lr": 0.1}, "best_value": 0.37, "budget_samples": 300,
        "samples_probe": 0, "probe": None, "prior": None,
        "trials": [
            {"number": 0, "status": "completed", "batch_size": 8, "lr": 0.1, "temperature": 0.0125, "value": 0.37,
             "samples": 300, "params": {}, "config": {}, "history": _HISTORY}
        ],
    }
)  # fmt: skip
FILES["study/report.json"] = '{"the good report": true}\n'
FILES["study/report.md"] = "# the good report\n"
FILES["study/report.html"] = "<p>the good report</p>\n"
FILES["badwarm.json"] = '{"best_config": {"batch_size": 8, "lr": 0.1, "warmup_samples": -5}, "budget_samples": 300}\n'
FILES["nothing.py"] = "import torch\n\nSEED = 0\n"
FILES["fn_only.py"] = """
import torch


def train(ctx):
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=ctx.config["lr"])
    for _ in ctx.loader(torch.utils.data.TensorDataset(torch.randn(64, 4), torch.zeros(64, dtype=torch.long))):
        ctx.step(1.0)
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[" ".join(c.args)[:60] for c in CASES])
def test_bad_input_gets_its_exit_code_and_message(folder: Path, case: Case, forked_cli: ForkedCli) -> None:
    before = {name: (folder / name).read_bytes() for name in case.untouched}
    argv = [a.format(d=folder) for a in case.args] + (["--no-progress"] if case.args[0] == "run" else [])
    code, out, err = forked_cli.run(argv, folder)
    err = err.strip()
    assert code == case.code, f"exit {code}\n{out}\n{err}"
    for word in case.words:
        assert word.format(d=folder) in err, f"{word!r} not in:\n{err}"
    assert "Traceback" not in err
    if case.one_line:
        assert len(err.splitlines()) == 1, err
    for name, data in before.items():
        assert (folder / name).read_bytes() == data, f"{name} was changed"
    for name in case.absent:
        assert not (folder / name).exists(), f"{name} was left behind"
