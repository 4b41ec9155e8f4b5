"""Nothing bstune reads can run code: no unpickling, no unsafe YAML, no server on all interfaces.

A scan of the package's syntax trees, so that a change that brings one in fails here
(the runtime refusal of YAML tags is tested in ``test_bad_input.py``). Every import form
counts (``import a.b``, ``from a import b``, ``from a.b import c``, aliases), names are
followed through their aliases, and any use of an unpickling module is caught wherever it
sits in a dotted name (``ray.cloudpickle.loads``). The scanner is checked on snippets too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "bstune"
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
UNSAFE_YAML = {"load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all"}
TORCH_LOAD = {"torch.load", "torch.serialization.load"}
IMPORTERS = {"__import__", "importlib.import_module"}
EVERY_INTERFACE = {"0.0.0.0", "::"}


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]`` for a name or an attribute chain on one; else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted name it stands for, from every import in the module."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:  # `import a.b` binds a; `import a.b as c` binds c to a.b
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _resolve(parts: list[str], aliases: dict[str, str]) -> str:
    """The dotted name ``parts`` stands for, its first name looked up in the module's imports."""
    return ".".join([aliases.get(parts[0], parts[0]), *parts[1:]])


def _unsafe_module(dotted: str) -> bool:
    return any(part in UNSAFE_MODULES for part in dotted.split("."))


def _true(call: ast.Call, keyword: str) -> bool:
    return any(k.arg == keyword and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


# An unpickling module may be imported only here, and then used only through SAFE_ATTRS.
ALLOWED_IMPORTS = {
    # ships the user's script module to Ray workers by value (Ray pickles trial functions anyway); reads nothing
    ("bstune/study/_ray_cluster.py", "ray.cloudpickle"),
    # trial workers and data-parallel ranks: bstune's process pickles what it hands the processes it spawns,
    # and each unpickles it from the pipe multiprocessing gives the two (as multiprocessing does with any
    # Process's arguments; cloudpickle ships lambdas and a script's functions); nothing read from a file or
    # the network, and in this one module only
    ("bstune/_spawn.py", "pickle"),
    ("bstune/_spawn.py", "cloudpickle"),
}
SAFE_ATTRS = {"register_pickle_by_value"}
# ... and used only so, in that file
ALLOWED_USES = {
    ("bstune/_spawn.py", name)
    # pickle.Unpickler: pickle.loads with the classes cloudpickle rebuilt kept (unpack_in_child), on the same bytes
    for name in ("pickle.dumps", "pickle.HIGHEST_PROTOCOL", "pickle.loads", "pickle.Unpickler", "cloudpickle.dumps")
} | {
    # says how cloudpickle *pickles* a script's functools.cache wrapper for Ray's workers (as its function)
    ("bstune/study/_ray_cluster.py", "ray.cloudpickle.Pickler.dispatch_table"),
}


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def problems_in(source: str, where: str = "<snippet>") -> list[str]:
    """Every way ``source`` could run code from what it reads, one line each."""
    tree = ast.parse(source, filename=where)
    aliases, parents = _aliases(tree), _parents(tree)
    out: list[str] = []
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                names = [f"{'.' * node.level}{node.module or ''}.{a.name}" for a in node.names]
            out += [
                f"{line} imports {n}"
                for n in names
                if _unsafe_module(n) and (where, n) not in ALLOWED_IMPORTS and n.split(".")[-1] not in SAFE_ATTRS
            ]
        elif isinstance(node, ast.Attribute | ast.Name) and not isinstance(parents.get(node), ast.Attribute):
            parts = _dotted(node)  # the whole chain, once: `a.b.c`, not also `a.b` and `a`
            if parts is not None and not isinstance(node.ctx, ast.Store):
                resolved = _resolve(parts, aliases).split(".")
                unsafe = [i for i, part in enumerate(resolved) if part in UNSAFE_MODULES]
                allowed = (where, ".".join(resolved)) in ALLOWED_USES
                if (
                    unsafe
                    and not allowed
                    and (unsafe[-1] + 1 == len(resolved) or resolved[unsafe[-1] + 1] not in SAFE_ATTRS)
                ):
                    out.append(f"{line} uses {'.'.join(resolved)}")
        elif isinstance(node, ast.Constant) and node.value in EVERY_INTERFACE:
            out.append(f"{line} binds to every interface")
        if isinstance(node, ast.Call) and (parts := _dotted(node.func)) is not None:
            name = _resolve(parts, aliases)
            if name in {"eval", "exec"} or (name.startswith("yaml.") and name.split(".")[-1] in UNSAFE_YAML):
                out.append(f"{line} calls {name}")
            elif name in TORCH_LOAD and not _true(node, "weights_only"):
                out.append(f"{line} calls {name} without weights_only=True")
            elif name == "numpy.load" and _true(node, "allow_pickle"):
                out.append(f"{line} calls {name} with allow_pickle=True")
            elif name == "pandas.read_pickle":
                out.append(f"{line} calls {name}")
            elif name in IMPORTERS and any(
                isinstance(a, ast.Constant) and isinstance(a.value, str) and _unsafe_module(a.value) for a in node.args
            ):
                out.append(f"{line} imports an unpickling module through {name}")
    return out


UNSAFE = [
    "import pickle",
    "import pickle as p",
    "import _pickle",
    "import ray.cloudpickle",
    "import ray.cloudpickle as cp",
    "from ray import cloudpickle",
    "from ray import cloudpickle as cp",
    "from ray.cloudpickle import loads",
    "from pickle import loads as safe_looking",
    "from joblib import load",
    "import ray\nray.cloudpickle.loads(b'')",
    "import torch\ntorch.serialization.pickle.loads(b'')",
    "import ray.util as u\nf = u.cloudpickle.loads",
    "import importlib\nimportlib.import_module('pickle')",
    "__import__('dill')",
    "import torch\ntorch.load('m.pt')",
    "import torch\ntorch.load('m.pt', weights_only=False)",
    "import torch as t\nt.load('m.pt')",
    "from torch import load\nload('m.pt')",
    "from torch import load as tl\ntl('m.pt')",
    "import torch\ntorch.serialization.load('m.pt')",
    "import yaml\nyaml.load(s)",
    "import yaml as y\ny.unsafe_load(s)",
    "from yaml import full_load\nfull_load(s)",
    "from yaml import load as read\nread(s)",
    "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
    "import pandas as pd\npd.read_pickle('a.pkl')",
    "eval('1')",
    "exec('x = 1')",
    "host = '0.0.0.0'",
    "def f(m):\n    from ray import cloudpickle\n    return cloudpickle",  # the module itself handed on
    "from ray.cloudpickle import register_pickle_by_value, loads",
]
SAFE = [
    "import yaml\nyaml.safe_load(s)",
    "from yaml import safe_load\nsafe_load(s)",
    "import torch\ntorch.load('m.pt', weights_only=True)",
    "from torch import load\nload('m.pt', weights_only=True)",
    "import numpy as np\nnp.load('a.npy')",
    "import json\njson.loads(s)",
    "import importlib\nimportlib.import_module(name)",
    "host = '127.0.0.1'",
    "import ray\nray.init()",
    "from ray.cloudpickle import register_pickle_by_value",
]


@pytest.mark.parametrize("source", UNSAFE)
def test_the_scan_catches(source: str) -> None:
    assert problems_in(source)


def test_an_allowed_import_is_allowed_only_where_listed_and_only_for_its_safe_use() -> None:
    source = "from ray import cloudpickle\ncloudpickle.register_pickle_by_value(m)"
    assert problems_in(source, "bstune/study/_ray_cluster.py") == []
    assert problems_in(source, "bstune/study/_study.py") == ["bstune/study/_study.py:1 imports ray.cloudpickle"]
    assert problems_in(source + "\ncloudpickle.loads(b'')", "bstune/study/_ray_cluster.py") == [
        "bstune/study/_ray_cluster.py:3 uses ray.cloudpickle.loads"
    ]


@pytest.mark.parametrize("source", SAFE)
def test_the_scan_lets_pass(source: str) -> None:
    assert problems_in(source) == []


def test_the_package_is_scanned() -> None:
    assert len(list(PACKAGE.rglob("*.py"))) > 20


def test_no_unpickling_unsafe_yaml_or_eval_in_the_package() -> None:
    problems: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        problems += problems_in(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert problems == []
