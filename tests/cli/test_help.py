"""``--help`` of every command, run through the real ``bstune`` entry point: each command says
what it does, and each option what it defaults to."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from bstune.cli import build_parser
from tests.reliability.conftest import python_env


def _help(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "bstune.cli", *args, "--help"],
        env=python_env() | {"COLUMNS": "200"},  # one option to a line
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _commands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_is_listed_with_a_summary_and_has_a_description() -> None:
    listing = _help()
    for name in _commands():
        (line,) = (ln for ln in listing.splitlines() if ln.strip().split(" ", 1)[0] == name)
        assert line.strip() != name, f"`bstune --help` lists {name} without a summary"
        paragraphs = _help(name).split("\n\n")
        # usage, then the description; without one the argument sections follow the usage directly
        assert not paragraphs[1].startswith(("positional arguments", "options")), (
            f"`bstune {name} --help`: no description"
        )


def test_noise_help_shows_the_defaults_of_its_warmup_training() -> None:
    text = " ".join(_help("noise").split())  # an option's help may wrap below its name
    assert "--lr LR learning rate of that training (default 0.05)" in text
    assert "--train-batch-size TRAIN_BATCH_SIZE batch size of that training (default 64)" in text


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_option_with_a_default_says_it(command: str) -> None:
    parser = _commands()[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            continue
        text = formatter._expand_help(action) if action.help else ""
        assert "default" in text, f"bstune {command} {action.option_strings[0]}: help does not give its default"
        if "default:" not in text:  # "(default: CUDA when available)" explains it in words
            assert str(action.default) in text, f"bstune {command} {action.option_strings[0]}: {text!r}"


@pytest.mark.parametrize("command", ["run", "submit", "probe", "noise", "train"])
def test_the_script_argument_says_what_the_command_loads(command: str) -> None:
    # run, submit and probe tune or probe a training function train(ctx) as well as a Task; noise and train need a Task
    (line,) = (ln for ln in _help(command).splitlines() if ln.strip().startswith("script "))
    assert "make_task() -> bstune.Task" in line
    assert ("train(ctx)" in line) == (command in {"run", "submit", "probe"}), line
