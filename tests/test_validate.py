"""The number checks of ``bstune/_validate.py``, and no module writing its own bool-excluding check again."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import numpy as np
import pytest

from bstune._validate import check_count, count_reason, finite, is_int, is_number, number_reason
from bstune.errors import ConfigError
from bstune.study import RaySettings, StudySettings
from bstune.training import TrainConfig

PACKAGE = Path(__file__).resolve().parents[1] / "bstune"


def _isinstance_of(node: ast.AST) -> str | None:
    """``"bool"`` for ``isinstance(x, bool)``, ``"other"`` for another isinstance call, else None."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        node = node.operand
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
        kind = node.args[1] if len(node.args) == 2 else None
        return "bool" if isinstance(kind, ast.Name) and kind.id == "bool" else "other"
    return None


def hand_written_checks(source: str) -> list[int]:
    """Lines of ``isinstance(x, bool)`` beside another isinstance in one ``and``/``or``: a check _validate makes."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BoolOp):
            kinds = [_isinstance_of(v) for v in node.values]
            if "bool" in kinds and "other" in kinds:
                lines.append(node.lineno)
    return lines


def test_the_scan_sees_both_spellings_and_not_a_plain_bool_check() -> None:
    source = "a = isinstance(v, bool) or not isinstance(v, int)\nb = isinstance(v, int) and not isinstance(v, bool)\n"
    assert hand_written_checks(source + "c = not isinstance(v, bool) or v\n") == [1, 2]


def test_no_module_writes_its_own_bool_excluding_check() -> None:
    found = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "_validate.py" and (lines := hand_written_checks(path.read_text()))
    }
    assert found == {}


def test_bools_are_neither_counts_nor_numbers_and_numpy_counts_only_when_asked() -> None:
    assert not is_int(True) and not is_number(False) and finite(True) is None
    assert not is_int(np.int64(3)) and is_int(np.int64(3), numpy=True)
    assert not is_number(np.float32(0.5)) and is_number(np.float32(0.5), numpy=True)
    assert finite(2) == 2.0 and finite(math.inf) is None and finite("1") is None


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (count_reason(0), "must be a positive integer, got 0"),
        (count_reason(True), "must be a positive integer, got True"),
        (count_reason(2.0), "must be a positive integer, got 2.0"),
        (count_reason(-1, minimum=0), "must be a non-negative integer, got -1"),
        (count_reason(2, minimum=3), "must be an integer >= 3, got 2"),
        (count_reason(3, minimum=3), None),
        (number_reason(0), "must be a positive number, got 0"),
        (number_reason(math.nan), "must be a positive number, got nan"),
        (number_reason(-0.5, strict=False), "must be a non-negative number, got -0.5"),
        (number_reason(1, minimum=1), "must be a number > 1, got 1"),
        (number_reason(0, unit="of seconds"), "must be a positive number of seconds, got 0"),
        (number_reason(0, strict=False), None),
    ],
)
def test_reasons_name_what_is_wanted_and_the_value(reason: str | None, expected: str | None) -> None:
    assert reason == expected


def test_check_count_returns_an_int_or_raises_naming_source_and_field() -> None:
    assert check_count(np.int64(4), source="s", field="f", numpy=True) == 4
    with pytest.raises(ConfigError, match=r"^s: f: must be a positive integer, got False$"):
        check_count(False, source="s", field="f")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: TrainConfig(batch_size=True, lr=0.1, max_samples=100),
            "batch_size: must be a positive integer, got True",
        ),
        (lambda: TrainConfig(batch_size=8, lr=math.inf, max_samples=100), "lr: must be a positive number, got inf"),
        (lambda: StudySettings(n_trials=0), "n_trials: must be a positive integer, got 0"),
        # a newcomer's --seed -1 ended in NumPy's traceback from inside Optuna's sampler
        (lambda: StudySettings(seed=-1), "seed: must be a non-negative integer, got -1"),
        (lambda: StudySettings(seed=2**32), "seed: must be below 2**32 (NumPy's seeds), got 4294967296"),
        (lambda: StudySettings(seed=1.5), "seed: must be a non-negative integer, got 1.5"),
        (lambda: StudySettings(heartbeat_interval=-1.0), "heartbeat_interval: must be a positive number of seconds"),
        (lambda: RaySettings(max_concurrent=False), "max_concurrent: must be a positive integer, got False"),
        (lambda: RaySettings(resources_per_trial={"gpu": math.nan}), "resources_per_trial.gpu: must be a non-negative"),
    ],
)
def test_the_call_sites_keep_their_messages(build: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build()  # type: ignore[operator]
