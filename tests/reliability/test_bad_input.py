"""Bad input, end to end: one message naming the file or argument, the field and what is expected.

Through the CLI (exit 2, no traceback) and through the Python API (a ConfigError whose
``source`` and ``field`` say where). Nothing in a search space is ever executed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import bstune
from bstune.cli import main
from bstune.errors import ConfigError, TaskError
from bstune.space import SearchSpace
from tests.reliability.conftest import python_env

GOOD_SCRIPT = """
import torch
import bstune


def make_task():
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    return bstune.Task(model=lambda: torch.nn.Linear(4, 2), train_data=(x[:160], y[:160]),
                       val_data=(x[160:], y[160:]), loss=torch.nn.CrossEntropyLoss(), name="tiny")
"""
FACTORY_FAILS = GOOD_SCRIPT.replace("model=lambda: torch.nn.Linear(4, 2)", "model=broken_factory").replace(
    "def make_task", "def broken_factory():\n    raise RuntimeError('no GPU for this model')\n\n\ndef make_task"
)
WRONG_SHAPES = GOOD_SCRIPT.replace("torch.randn(200, 4", "torch.randn(200, 5")

SPACES = {
    "malformed.yaml": "name: s\nbatch_size:\n  min: 8\n   max: 16\n",
    "unknown_key.yaml": "name: s\nbatchsize: {min: 8}\n",
    "wrong_type.yaml": "name: s\nlr: {min: fast}\n",
    "low_above_high.yaml": "name: s\nparams:\n  weight_decay: {type: float, low: 0.1, high: 0.01}\n",
    "batch_above_dataset.yaml": "name: s\nbatch_size: {min: 500}\n",
    "ok.yaml": "name: s\nbatch_size: {min: 8, max: 64}\n",
}


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name, text in SPACES.items():
        (tmp_path / name).write_text(text)
    for name, text in (("good.py", GOOD_SCRIPT), ("factory.py", FACTORY_FAILS), ("shapes.py", WRONG_SHAPES)):
        (tmp_path / name).write_text(text)
    (tmp_path / "not_a_dir").write_text("a file where a folder is expected\n")
    return tmp_path


# (arguments after `bstune run`, with {d} the files folder; what stderr must say)
CASES = [
    (["good.py", "--space", "malformed.yaml"], "malformed.yaml: invalid YAML at line 4, column 7"),
    (["good.py", "--space", "unknown_key.yaml"], "unknown_key.yaml: batchsize: unknown key 'batchsize'; known keys:"),
    (["good.py", "--space", "wrong_type.yaml"], "wrong_type.yaml: lr.min: expected a number, got str 'fast'"),
    (
        ["good.py", "--space", "low_above_high.yaml"],
        "low_above_high.yaml: params.weight_decay.low: `low <= high` must hold, got low=0.1, high=0.01",
    ),
    (
        ["good.py", "--space", "batch_above_dataset.yaml"],
        "batch_above_dataset.yaml: batch_size.min: batch_size.min (500) exceeds the training set (160 examples)",
    ),
    (["good.py", "--space", "missing.yaml"], "missing.yaml: no such file"),
    (["missing.py", "--space", "ok.yaml"], "missing.py: no such file"),
    (["good.py", "--space", "ok.yaml", "--trials", "0"], "argument --trials: must be positive, got 0"),
    (
        ["good.py", "--space", "ok.yaml", "--budget-samples", "-5"],
        "argument --budget-samples: must be positive, got -5",
    ),
    (["good.py", "--space", "ok.yaml", "--trials", "ten"], "argument --trials: expected a whole number, got 'ten'"),
    (
        ["factory.py", "--space", "ok.yaml"],
        "factory.py: make_task(): Task: model: the model factory raised RuntimeError: no GPU for this model",
    ),
    (
        ["shapes.py", "--space", "ok.yaml"],
        "shapes.py: make_task(): Task: model: the model failed on a batch of 2 examples from train_data "
        "(inputs tensor of shape (2, 5)",
    ),
    (["good.py", "--space", "ok.yaml", "--storage", "runs/study"], "storage: 'runs/study' is neither a database URL"),
    (
        ["good.py", "--space", "ok.yaml", "--storage", "sqlite:///{d}/not_a_dir/study.db"],
        "storage: cannot open 'sqlite:///{d}/not_a_dir/study.db': FileExistsError",
    ),
    (
        ["good.py", "--space", "ok.yaml", "--storage", "journal:{d}/not_a_dir/study.log"],
        "storage: cannot open 'journal:{d}/not_a_dir/study.log': FileExistsError",
    ),
    (
        ["good.py", "--space", "ok.yaml", "--out", "{d}/not_a_dir"],
        "storage: cannot open 'sqlite:///{d}/not_a_dir/study.db'",
    ),
]


@pytest.mark.parametrize(
    ("args", "message"), CASES, ids=[c[1].split(":")[0][:40] + str(i) for i, c in enumerate(CASES)]
)
def test_cli_names_file_field_and_expectation_and_exits_2(
    files: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(files)
    argv = ["run", *(a.format(d=files) for a in args), "--no-progress", "--mode", "baseline"]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse rejects bad option values itself, with exit status 2
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert message.format(d=files) in err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(("bstune: error: ", "bstune run: error: "))  # one line says it


def test_python_api_errors_say_where(files: Path) -> None:
    from bstune._loading import load_task

    task = load_task(files / "good.py")
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        ({"space": files / "unknown_key.yaml"}, str(files / "unknown_key.yaml"), "batchsize"),
        ({"space": files / "batch_above_dataset.yaml"}, str(files / "batch_above_dataset.yaml"), "batch_size.min"),
        ({"space": {"name": "s", "lr": {"min": 1.0, "max": 0.1}}}, "<dict>", "lr.min"),
        ({"n_trials": 0}, "Study", "n_trials"),
        ({"n_trials": 2.5}, "Study", "n_trials"),
        ({"budget_samples": -5}, "Study", "budget_samples"),
        ({"budget_samples": 0}, "Study", "budget_samples"),
        ({"mode": "grid"}, "Study", "mode"),
        ({"pruner": "asha"}, "Study", "pruner"),
        ({"objective": "val_f1"}, "Study", "objective"),
        ({"direction": "up"}, "Study", "direction"),
        ({"heartbeat_interval": 0}, "Study", "heartbeat_interval"),
        ({"heartbeat_interval": 30, "grace_period": 45}, "Study", "grace_period"),
        ({"storage": "not a url"}, "storage", None),
        ({"storage": "postgresql://nobody@127.0.0.1:1/none"}, "storage", None),
        ({"storage": f"sqlite:///{files}/not_a_dir/s.db"}, "storage", None),
    ]
    for kwargs, source, field in cases:
        args = {"space": files / "ok.yaml", "n_trials": 2, "budget_samples": 800, "progress": False} | kwargs
        with pytest.raises(ConfigError) as info:
            bstune.Study(task, **args)
        assert (info.value.source, info.value.field) == (source, field), kwargs
        assert "Traceback" not in str(info.value) and len(str(info.value)) < 400


def test_task_errors_name_the_field() -> None:
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))

    def broken() -> torch.nn.Module:
        raise RuntimeError("no GPU for this model")

    with pytest.raises(TaskError, match=r"^Task: model: the model factory raised RuntimeError: no GPU") as info:
        bstune.Task(model=broken, train_data=(x, y), val_data=(x, y), loss=torch.nn.CrossEntropyLoss())
    assert info.value.field == "model"
    with pytest.raises(TaskError, match=r"^Task: model: the model failed on a batch of 2 examples from train_data"):
        bstune.Task(model=lambda: torch.nn.Linear(5, 2), train_data=(x, y), val_data=(x, y), loss=torch.nn.MSELoss())
    with pytest.raises(TaskError, match=r"^Task: loss: loss\(outputs, targets\) failed on train_data"):
        bstune.Task(
            model=lambda: torch.nn.Linear(4, 2),
            train_data=(x, y[:, None].expand(64, 3)),  # targets of the wrong shape
            val_data=(x, y),
            loss=torch.nn.CrossEntropyLoss(),
        )


def test_a_search_space_never_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    for text in (
        f"name: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]\n",
        f"name: s\nlr: !!python/object/apply:os.system ['touch {marker}']\n",
        "name: s\nparams: !!python/object:bstune.space.ParamSpec {name: momentum}\n",
        "name: !!python/name:os.system\n",
    ):
        evil.write_text(text)
        with pytest.raises(
            ConfigError, match=r"invalid YAML at line \d+, column \d+: could not determine a constructor"
        ):
            SearchSpace.from_yaml(evil)
        assert not marker.exists()


@pytest.mark.slow
def test_the_console_script_refuses_bad_input_in_one_line(files: Path) -> None:
    """The installed entry point, in a real process: exit status 2, one line, no traceback."""
    marker = files / "pwned"
    (files / "evil.yaml").write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    for args, message in (
        (["run", "good.py", "--space", "evil.yaml"], "evil.yaml: invalid YAML at line 1, column 7"),
        (["run", "good.py", "--space", "ok.yaml", "--storage", "x.db"], "storage: 'x.db' is neither"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "bstune.cli", *args],
            cwd=files,
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"bstune: error: {message}"), proc.stderr
    assert not marker.exists()
