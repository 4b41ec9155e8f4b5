"""The public names: each in ``__all__`` resolves, and a lazily loaded one is typed as well.

A package ``__init__`` that loads names on first use (``__getattr__`` over a ``_LAZY``
table) imports the same names under ``if TYPE_CHECKING:``, so that a type checker sees
``bstune.Study`` as the class rather than ``object``. The two lists are read from the source.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bstune"
INITS = sorted(PACKAGE.rglob("__init__.py"))


def _module(path: Path) -> str:
    return ".".join(path.parent.relative_to(PACKAGE.parent).parts)


def _literal(tree: ast.Module, name: str) -> object:
    """The literal assigned to ``name`` at the module's top level."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"no top-level {name} = <literal>")


def _type_checking_imports(tree: ast.Module) -> dict[str, str]:
    """Name -> module for the imports under a top-level ``if TYPE_CHECKING:``."""
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.module, ast.unparse(stmt)
                out |= {a.asname or a.name: stmt.module for a in stmt.names}
    return out


def _eager_imports(tree: ast.Module) -> set[str]:
    """Public names bound by top-level ``from bstune... import`` statements."""
    return {
        a.asname or a.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bstune")
        for a in node.names
        if not (a.asname or a.name).startswith("_")
    }


def _has_lazy_getattr(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body)


LAZY_INITS = [p for p in INITS if _has_lazy_getattr(ast.parse(p.read_text()))]


def test_the_lazy_packages_are_found() -> None:
    assert {_module(p) for p in LAZY_INITS} >= {"bstune", "bstune.report"}


@pytest.mark.parametrize("path", LAZY_INITS, ids=_module)
def test_lazy_names_are_imported_for_type_checkers_and_exported(path: Path) -> None:
    tree = ast.parse(path.read_text())
    lazy = _literal(tree, "_LAZY")
    assert isinstance(lazy, dict) and lazy
    assert _type_checking_imports(tree) == lazy  # same names, from the same modules
    exported = _literal(tree, "__all__")
    assert isinstance(exported, list) and len(exported) == len(set(exported))
    assert set(exported) - {"__version__"} == _eager_imports(tree) | set(lazy)  # nothing left out, nothing extra


@pytest.mark.parametrize("path", INITS, ids=_module)
def test_every_name_in_all_resolves(path: Path) -> None:
    module = importlib.import_module(_module(path))
    exported = getattr(module, "__all__", [])
    assert [name for name in exported if not hasattr(module, name)] == []
    if _has_lazy_getattr(ast.parse(path.read_text())):
        lazy = _literal(ast.parse(path.read_text()), "_LAZY")
        assert isinstance(lazy, dict)
        for name, source in lazy.items():  # loaded from the module the table names
            assert getattr(module, name) is getattr(importlib.import_module(source), name)


def test_a_plain_import_reaches_every_public_subpackage() -> None:
    """`import bstune; bstune.noise.adam_preconditioner(...)`, as the README writes it, failed with AttributeError
    once bstune/__init__ stopped importing its subpackages (unless something else had imported them first)."""
    import subprocess
    import sys

    public = sorted(
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if not p.name.startswith("_") and (p.suffix == ".py" or (p / "__init__.py").is_file())
    )
    public = [name for name in public if name != "cli"]  # the command line, run as a program
    code = f"import bstune; print(sorted(n for n in {public!r} if type(getattr(bstune, n)).__name__ == 'module'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(public)
