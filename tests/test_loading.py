"""Loading a user's script (``bstune._loading``): as ``python SCRIPT`` runs it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bstune._loading import load_subject


def test_a_script_imports_the_modules_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A newcomer's script did ``from diab import data`` (a module beside it): ``python SCRIPT`` runs it, but
    ``bstune run SCRIPT`` failed with "No module named 'diab'"."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader's entry goes with this test
    (tmp_path / "helpers_beside.py").write_text("def scale(x):\n    return 2 * x\n")
    (tmp_path / "loop.py").write_text("from helpers_beside import scale\n\ndef train(ctx):\n    return scale(21)\n")
    try:
        train = load_subject(tmp_path / "loop.py")
        assert train(None) == 42  # type: ignore[arg-type]
        assert sys.path[0] == str(tmp_path.resolve())  # first, as python puts the script's folder
    finally:
        sys.modules.pop("helpers_beside", None)


_SCRIPT = """
import functools
import torch

class Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return i

@functools.cache
def data():
    return Pairs()

def train(ctx):
    return data()
"""


def _in_a_spawned_child(blob: bytes, out: Any) -> None:
    """What a trial worker does with a training function from its parent, then what its DataLoader workers
    (spawned too) need: the script's Dataset pickled again, by name, as the script module's own class."""
    import pickle

    from bstune._spawn import unpack

    try:
        train = unpack(blob)
        dataset = train(None)
        module = sys.modules[type(dataset).__module__]
        same = type(dataset) is module.Pairs and train is module.train
        out.put((same, len(pickle.loads(pickle.dumps(dataset)))))
    except Exception as exc:
        out.put((False, repr(exc)))


def test_a_loaded_scripts_functions_and_classes_reach_spawned_processes_as_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bstune run SCRIPT --parallel-trials 2` of a train(ctx) whose data came from a functools.cache function:
    every worker died with "No module named 'bstune_user_...'" (the cache wrapper went by name, to a module
    only the parent had). Shipped by value instead, the script's Dataset class was a copy in the worker, and
    its DataLoader workers could not pickle it. The script's module is importable in every child instead."""
    import multiprocessing

    from bstune._spawn import pack

    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "loop.py").write_text(_SCRIPT)
    train = load_subject(tmp_path / "loop.py")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.SimpleQueue()
    child = ctx.Process(target=_in_a_spawned_child, args=(pack(train), out))
    child.start()
    child.join(120)
    assert out.get() == (True, 4)
    assert child.exitcode == 0
