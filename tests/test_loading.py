"""Loading a user's script (``bstune._loading``): as ``python SCRIPT`` runs it."""

from __future__ import annotations

import sys
from pathlib import Path

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
