"""The bstune command line, run as a user would: the installed console script in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bstune.cli import main
from tests.cli.cli_runner import ForkedCli

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "examples" / "digits_mlp.py")


def _bstune() -> list[str]:
    script = Path(sys.executable).parent / "bstune"
    return [str(script)] if script.exists() else [shutil.which("bstune") or "bstune"]


def test_console_script_measures_and_writes_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*_bstune(), "noise", DIGITS, "--batch-size", "32", "--max-samples", "2000", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "B_simple =" in proc.stdout and "90% CI" in proc.stdout
    data = json.loads((tmp_path / "noise_scale.json").read_text())
    assert data["estimate"]["b_simple"] > 0 and data["estimate"]["method"] == "per_example"


def test_python_dash_m_bstune_is_the_command() -> None:
    """Where the console script is not on PATH, ``python -m bstune`` failed: the package had no __main__."""
    proc = subprocess.run([sys.executable, "-m", "bstune", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: bstune ") and "run" in proc.stdout


def test_train_prints_the_curve_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "train",
            DIGITS,
            "--batch-size",
            "48",  # not a divisor of the milestones' 128 samples: a row's samples are not its milestone
            "--lr",
            "0.05",
            "--max-samples",
            "1280",
            "--track-noise",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    run = json.loads((tmp_path / "train.json").read_text())
    assert out.startswith("optimizer sgd (momentum 0.9): batch_size=48")  # the task's momentum, said
    assert "status: completed" in out and f"samples: {run['samples']}" in out
    assert run["status"] == "completed"
    rows = [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert rows == [str(h["samples"]) for h in run["history"]]  # the samples trained, not the milestone's number
    assert (
        main(["train", DIGITS, "--batch-size", "64", "--lr", "1e7", "--momentum", "0.9", "--max-samples", "6400"]) == 1
    )  # diverged: the work failed, the input was fine
    assert "status: diverged" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["noise", "missing.py"], "missing.py: no such file"),
        (
            ["train", DIGITS, "--batch-size", "5000", "--lr", "0.1", "--max-samples", "100"],
            "TrainConfig: batch_size: 5000 is larger than the training set",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_broken_script_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "broken.py"
    script.write_text(
        "import torch\nimport bstune\n\ndef make_task():\n    return bstune.Task(model=lambda: torch.nn.Linear(2, 1),"
        " train_data=(torch.zeros(0, 2), torch.zeros(0, 1)), val_data=(torch.zeros(4, 2), torch.zeros(4, 1)),"
        " loss=torch.nn.MSELoss())\n"
    )
    assert main(["noise", str(script)]) == 2
    err = capsys.readouterr().err
    assert f"{script}: make_task(): Task: train_data: is empty" in err
    (tmp_path / "nothing.py").write_text("x = 1\n")
    assert main(["noise", str(tmp_path / "nothing.py")]) == 2
    assert "defines neither make_task()" in capsys.readouterr().err


def test_argument_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["noise", DIGITS, "--batch-size", "-3"])
    assert info.value.code == 2


SPACE_FILE = str(ROOT / "search_spaces" / "mlp_classifier.yaml")


def test_run_resume_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "study")
    # batch sizes up to 256, not the file's 1024: 3000 samples give a trial at B=256 its 9 steps, one per milestone
    space = tmp_path / "space.yaml"
    space.write_text(Path(SPACE_FILE).read_text().replace("  max: 1024\n", "  max: 256\n", 1))
    base = [
        "run",
        DIGITS,
        "--space",
        str(space),
        "--budget-samples",
        "3000",
        "--out",
        out,
        "--no-progress",
        "--mode",
        "baseline",
    ]
    assert main([*base, "--trials", "2"]) == 0
    first = json.loads((tmp_path / "study" / "result.json").read_text())
    assert len(first["trials"]) == 2 and "best config" in capsys.readouterr().out
    assert first["pruner"] == "hyperband"  # the report says which pruner stopped trials
    assert main([*base, "--trials", "3"]) == 2  # the folder holds a study: refuse to mix silently
    assert (
        "already holds study 'bstune-digits_mlp' with 2 trials (2 finished); pass --resume" in capsys.readouterr().err
    )
    assert main([*base, "--trials", "3", "--resume"]) == 0
    again = json.loads((tmp_path / "study" / "result.json").read_text())
    assert [t["value"] for t in again["trials"][:2]] == [t["value"] for t in first["trials"]]
    assert len(again["trials"]) == 3
    capsys.readouterr()
    assert main(["report", out]) == 0
    printed = capsys.readouterr().out
    assert "study bstune-digits_mlp (baseline mode): 3 trials" in printed
    assert "## Recommendation" in printed and "Train with batch size" in printed
    assert (tmp_path / "study" / "report.md").is_file()
    assert json.loads((tmp_path / "study" / "report.json").read_text())["recommended"]["batch_size"] > 0
    assert main(["report", str(tmp_path)]) == 2
    assert "no result.json here; run `bstune run ... --out FOLDER` first" in capsys.readouterr().err
    (tmp_path / "study" / "result.json").unlink()  # as a study stopped by Ctrl-C leaves its folder
    assert main(["report", out]) == 2
    assert "a study's trials are (study.db): it stopped before its end; finish it with" in capsys.readouterr().err


def test_the_result_is_saved_before_the_summary_that_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A summary that failed on a value it could not format (an unresolved B_simple) ran before result.json was
    written, so a study's every trial was out of reach of ``bstune report``."""
    import bstune._run_command

    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("summary")

    monkeypatch.setattr(bstune._run_command, "format_summary", broken)
    out = tmp_path / "study"
    argv = ["run", DIGITS, "--space", SPACE_FILE, "--budget-samples", "9000", "--trials", "1", "--mode", "baseline"]
    with pytest.raises(RuntimeError, match="summary"):
        main([*argv, "--out", str(out), "--no-progress"])
    assert len(json.loads((out / "result.json").read_text())["trials"]) == 1


def test_another_study_in_the_same_out_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two scripts run into one --out: both were accepted and exited 0, and the second's result.json and report
    replaced the first's without a word (its trials stayed in study.db, out of reach of its report)."""
    out = str(tmp_path / "study")
    argv = ["run", DIGITS, "--space", SPACE_FILE, "--budget-samples", "9000", "--trials", "1", "--mode", "baseline"]
    assert main([*argv, "--out", out, "--no-progress", "--study-name", "first"]) == 0
    before = (tmp_path / "study" / "result.json").read_text()
    capsys.readouterr()
    assert main([*argv, "--out", out, "--no-progress", "--study-name", "second"]) == 2
    err = capsys.readouterr().err
    assert "holds study 'first' (its result.json, report or trials), which this run's would be written over" in err
    assert "run its own command with --resume" in err
    # a storage of its own elsewhere: the folder's result.json is still the other study's
    storage = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert main([*argv, "--out", out, "--no-progress", "--study-name", "second", "--storage", storage]) == 2
    # a result.json (fetched, or of a run with --storage elsewhere) whose study the folder's storage does not hold,
    # even under this run's name: the reviewer followed the first hint's '--study-name' and overwrote it
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    (fetched / "result.json").write_text(before)
    argv_fetched = [*argv, "--out", str(fetched), "--no-progress", "--study-name", "first"]
    assert main(argv_fetched) == 2
    assert (tmp_path / "study" / "result.json").read_text() == before == (fetched / "result.json").read_text()


def test_ctrl_c_while_the_report_is_written_says_the_study_is_done_and_how_to_write_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newcomer's Ctrl-C landed as the report was written: "bstune: interrupted" and nothing else, though the
    study had finished and result.json was written."""

    def interrupted(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("bstune._run_command.write_report", interrupted)
    out = tmp_path / "study"
    space = tmp_path / "space.yaml"  # batch sizes up to 256, as above
    space.write_text(Path(SPACE_FILE).read_text().replace("  max: 1024\n", "  max: 256\n", 1))
    args = ["run", DIGITS, "--space", str(space), "--budget-samples", "3000", "--out", str(out), "--no-progress"]
    assert main([*args, "--mode", "baseline", "--trials", "1", "--rescore-top", "0"]) == 130
    err = capsys.readouterr().err
    assert (
        f"bstune: interrupted while writing the report; the study finished and {out / 'result.json'} is kept: "
        f"`bstune report {out}` writes the report from it"
    ) in err
    assert (out / "result.json").exists() and not (out / "report.md").exists()


def test_report_says_when_the_storage_ran_on_past_result_json_or_the_study_is_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A newcomer resumed a finished 8-trial study with --trials 14 and killed it at 10: `bstune report` printed
    the old 8 without a word. On a study still running, it said 'it stopped before its end; finish it with
    --resume', which starts a second process on it."""
    import optuna

    from bstune._keys import OWNER_KEY
    from bstune.study._liveness import Owner

    out = tmp_path / "study"
    argv = ["run", DIGITS, "--space", SPACE_FILE, "--budget-samples", "9000", "--trials", "1", "--mode", "baseline"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    study = optuna.load_study(study_name="bstune-digits_mlp", storage=f"sqlite:///{out / 'study.db'}")
    done = study.trials[0]
    study.add_trial(optuna.trial.create_trial(params=done.params, distributions=done.distributions, value=0.5))
    written = json.loads((out / "result.json").read_text())  # and a queued retry it held, which never ran
    written["trials"].append(written["trials"][0] | {"number": 1, "status": "waiting", "value": None})
    (out / "result.json").write_text(json.dumps(written))
    capsys.readouterr()
    with caplog.at_level("WARNING", logger="bstune.cli"):
        assert main(["report", str(out)]) == 0
    assert "holds 2 finished trial(s), result.json 1: the study ran on after it was written (resumed, then" in (
        caplog.text
    )
    running = study.ask()  # a trial this process runs: alive
    study._storage.set_trial_system_attr(running._trial_id, OWNER_KEY, Owner.current().to_dict())
    (out / "result.json").unlink()
    assert main(["report", str(out)]) == 2
    assert "no result.json here yet: the study in study.db is running" in capsys.readouterr().err


_GONE_READER = """
import os, sys
from bstune.cli import main

class Gone:  # a pipe whose reader (head) has stopped reading, until fd 1 is sent elsewhere
    def __init__(self):
        self.fd = os.fstat(1)
    def broken(self):
        if os.fstat(1) == self.fd:
            raise BrokenPipeError(32, "Broken pipe")
    def write(self, text):
        self.broken()
    def flush(self):
        self.broken()
    def fileno(self):
        return 1

sys.stdout = Gone()
raise SystemExit(main(["report", sys.argv[1], "--all-trials"]))
"""


def test_a_report_piped_into_a_reader_that_stops_ends_without_a_traceback(tmp_path: Path) -> None:
    """`bstune report FOLDER | head` ended in a BrokenPipeError traceback."""
    shutil.copytree(ROOT / "examples" / "digits_report", tmp_path / "study")
    proc = subprocess.run(
        [sys.executable, "-c", _GONE_READER, str(tmp_path / "study")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 141 and "Traceback" not in proc.stderr, proc.stderr


def test_a_broken_pipe_that_is_not_stdouts_is_not_taken_for_a_reader_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only stdout's broken pipe ends the command quietly: one from a worker's pipe is an error to see."""
    from bstune import _commands

    def broken(args: object) -> int:
        raise BrokenPipeError(32, "a worker's pipe")

    monkeypatch.setattr(_commands, "cmd_report", broken)
    with pytest.raises(BrokenPipeError, match="a worker's pipe"):
        main(["report", str(ROOT / "examples" / "digits_report")])


def test_probe_prints_noise_scale_ceiling_throughput_and_prior(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["probe", DIGITS, "--space", SPACE_FILE, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for words in (
        "B_simple",
        "90% CI",
        "LR ceiling",
        "throughput (samples/s)",
        "prior: first trials drawn from batch sizes",
    ):
        assert words in out
    assert "(effective temperature lr/(B(1-m)) " in out and "(temperature " not in out
    rungs = out.split("interquartile range in brackets: ")[1].splitlines()[0].split(", B=")
    assert all("(" in rung and ")" in rung for rung in rungs)  # each rung's rate with its spread
    data = json.loads((tmp_path / "probe.json").read_text())
    prior, probe = data["prior"], data["probe"]
    assert prior["batch_low"] <= prior["batch_high"] <= prior["b_noise"] + 1  # the band tops out at B_noise
    assert probe["samples_used"] > 0 and probe["throughput"]
    # the line says where B_simple was measured, not the probe's whole spend (a newcomer read one for the other)
    assert f"after {probe['b_simple_at_samples']:,} samples of training; the probe spent " in out
    assert f"{probe['samples_used']:,} in all" in out
    # told a study's short trial budget, it measures where that study's probe does: at one trial's length
    assert main(["probe", DIGITS, "--space", SPACE_FILE, "--budget-samples", "3000", "--out", str(tmp_path)]) == 0
    short = json.loads((tmp_path / "probe.json").read_text())["probe"]
    assert short["b_simple_at_samples"] <= 3000 + short["batch_size"] < probe["b_simple_at_samples"]


TINY_TASK = """
import torch
import bstune


def make_task():
    x = torch.randn(600, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] + 0.3 * torch.randn(600, generator=torch.Generator().manual_seed(1)) > 0).long()
    return bstune.Task(model=lambda: torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)),
                       train_data=(x[:512], y[:512]), val_data=(x[512:], y[512:]),
                       loss=torch.nn.CrossEntropyLoss(), name="tiny")
"""


@pytest.mark.slow
def test_crit_measures_a_finished_studys_config_and_rewrites_its_report(tmp_path: Path, forked_cli: ForkedCli) -> None:
    """`bstune run --out F` then `bstune crit SCRIPT F`, as a user types them; a second `crit` keeps the first."""
    script, space, out = tmp_path / "tiny.py", tmp_path / "space.yaml", tmp_path / "study"
    script.write_text(TINY_TASK)
    space.write_text("name: tiny\nbatch_size: {min: 4, max: 128}\nlr: {min: 0.001, max: 3.0}\n")
    run = ["run", str(script), "--space", str(space), "--trials", "3", "--budget-samples", "2400"]
    run += ["--mode", "baseline", "--rescore-top", "0", "--out", str(out), "--no-progress"]
    assert forked_cli.run(run, tmp_path)[0] == 0
    proc = forked_cli.completed(["crit", str(script), str(out), "--device", "cpu"], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "B_crit over training" in proc.stdout and "cost" in proc.stdout
    measured = json.loads((out / "critical.json").read_text())
    result = json.loads((out / "result.json").read_text())
    assert result["critical_measured"] == measured and measured["trial"] == result["best_trial"]
    assert all(4 <= b <= 128 for b in measured["ladder"])
    report = (out / "report.md").read_text()
    section = report[report.index("## Critical batch size") :]
    assert section.index("**Measured directly**") < section.index("Fitted to the study's own trials")
    assert json.loads((out / "report.json").read_text())["critical_batch"]["measured"]["trial"] == result["best_trial"]
    again = forked_cli.completed(["crit", str(script), str(out)], tmp_path, timeout=300)
    assert again.returncode == 0 and measured["summary"] in again.stdout
    assert "segment 0 (" in proc.stdout and "segment 0 (" not in again.stdout  # kept: no branch trained again


def test_a_target_value_without_its_metric_says_which_metric_it_is_read_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A newcomer meant an accuracy: `--target-value 0.45` alone quietly became train_loss <= 0.45."""
    sample = Path(__file__).resolve().parents[1] / "examples" / "digits_report"
    assert main(["report", str(sample), "--target-value", "0.45", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "--target-value 0.45 is read as a target for train_loss, the default --target-metric" in err
    assert main(["report", str(sample), "--target-metric", "train_loss", "--target-value", "0.45", "--out",
                 str(tmp_path)]) == 0  # fmt: skip
    assert "is read as a target" not in capsys.readouterr().err


def test_a_target_metric_the_result_has_no_direction_for_takes_one_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A newcomer's loop reported val_r2 beside its objective: `bstune report --target-metric val_r2` said to edit
    result.json by hand, the only way there was to say the metric is maximized."""
    sample = Path(__file__).resolve().parents[1] / "examples" / "digits_report" / "result.json"
    data = json.loads(sample.read_text())
    for trial in data["trials"]:
        for row in trial["history"]:
            row["val_score"] = row.get("val_accuracy")  # a name that does not say its direction
    (tmp_path / "result.json").write_text(json.dumps(data))
    target = ["report", str(tmp_path), "--target-metric", "val_score", "--target-value", "0.9"]
    assert main(target) == 2
    assert "--target-direction maximize" in capsys.readouterr().err
    assert main([*target, "--target-direction", "maximize"]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["critical_batch"]["direction"] == "maximize"
