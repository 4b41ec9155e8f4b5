"""Nothing bstune reads can run code: no unpickling, no unsafe YAML, no server on all interfaces.

A scan of the package's syntax trees, so that a change that brings one in fails here
(the runtime refusal of YAML tags is tested in ``test_bad_input.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "bstune"
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
UNSAFE_YAML = {"load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all"}


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """(dotted name, call) for every call whose callee is a name or an attribute chain."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, func = [], node.func
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                out.append((".".join([func.id, *reversed(parts)]), node))
    return out


def test_the_package_is_scanned() -> None:
    assert len(list(PACKAGE.rglob("*.py"))) > 20


def test_no_unpickling_unsafe_yaml_or_eval_in_the_package() -> None:
    problems: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(PACKAGE.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                problems += [f"{where}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
            if isinstance(node, ast.Constant) and node.value == "0.0.0.0":
                problems.append(f"{where}:{node.lineno} binds to every interface")
        for name, call in _calls(tree):
            line = f"{where}:{call.lineno} calls {name}"
            if name in {"eval", "exec"} or (name.startswith("yaml.") and name.split(".")[-1] in UNSAFE_YAML):
                problems.append(line)
            if name == "torch.load" and not any(
                k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in call.keywords
            ):
                problems.append(line + " without weights_only=True")
    assert problems == []
