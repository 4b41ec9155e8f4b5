"""The import graph of ``bstune/``: no circles, no reaching into another package's private modules,
and the library never importing its command line.

Every import counts: at module top, inside functions (lazy) and under ``TYPE_CHECKING``.
``KNOWN`` lists the edges that still break a rule, each with the issue that removes it; the
test fails when a new one appears *and* when a listed one is gone (so the list only shrinks).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bstune"
CLI = {  # the command line and its entry points (python -m bstune, a cluster job)
    "bstune.cli",
    "bstune.__main__",
    "bstune._commands",
    "bstune._command_io",
    "bstune._run_command",
    "bstune._train_command",
    "bstune._cluster_job",
}

# what still breaks a rule today (issue 14 removes them); remove an entry once it is gone
KNOWN_CIRCLES: set[frozenset[str]] = set()
KNOWN_EDGES: set[tuple[str, str]] = set()  # private modules of another package, or the CLI, imported


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the bstune modules it imports (the longest existing prefix of each imported name)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _bad_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    bad: set[tuple[str, str]] = set()
    for a, targets in graph.items():
        for b in targets:
            package_of_b = b.rpartition(".")[0]
            private = b.rpartition(".")[2].startswith("_")
            if private and package_of_b != "bstune" and not (a == package_of_b or a.startswith(package_of_b + ".")):
                bad.add((a, b))  # another package's private module
            if b in CLI and a not in CLI:
                bad.add((a, b))  # the library importing its command line
    return bad


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "bstune.errors" in graph["bstune.task"]
    assert "bstune.noise" in graph["bstune.training._loop"]
    assert "bstune.noise._tracker" in graph["bstune.noise"]  # a private module, named in full
    assert "bstune.jobs" in graph["bstune._cluster_job"]
    assert "bstune.study" in graph["bstune.jobs"]  # inside a function


def test_rules_catch_a_circle_a_private_import_and_a_cli_import() -> None:
    graph = {"bstune.a": {"bstune.b._x"}, "bstune.b._x": {"bstune.a"}, "bstune.c": {"bstune.cli"}, "bstune.cli": set()}
    assert _cycles(graph) == [["bstune.a", "bstune.b._x"]]
    assert _bad_edges(graph) == {("bstune.a", "bstune.b._x"), ("bstune.c", "bstune.cli")}


def test_no_new_circle_or_bad_import_and_no_known_one_fixed_silently() -> None:
    graph = import_graph()
    circles = {frozenset(c) for c in _cycles(graph)}
    edges = _bad_edges(graph)
    new = [" -> ".join(sorted(c)) for c in circles - KNOWN_CIRCLES] + [f"{a} -> {b}" for a, b in edges - KNOWN_EDGES]
    gone = [" , ".join(sorted(c)) for c in KNOWN_CIRCLES - circles] + [f"{a} -> {b}" for a, b in KNOWN_EDGES - edges]
    assert not new, "import circles, or imports of another package's private module or of the CLI:\n  " + "\n  ".join(
        new
    )
    assert not gone, "fixed: remove from KNOWN_CIRCLES / KNOWN_EDGES:\n  " + "\n  ".join(gone)


def test_records_and_the_report_load_without_optuna_or_the_study_layer() -> None:
    code = (
        "import sys, bstune.records, bstune.report, bstune.analysis; "
        "sys.exit(sorted(m for m in ('optuna', 'bstune.study', 'bstune.cli') if m in sys.modules) or 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_the_command_line_answers_help_without_loading_torch_scipy_or_optuna() -> None:
    """`bstune --help` and `import bstune` take a tenth of a second, not the seconds PyTorch takes to load."""
    code = (
        "import sys, contextlib, io, bstune.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    bstune.cli.main(['run', '--help'])\n"
        "sys.exit(sorted(m for m in ('torch', 'scipy', 'optuna', 'numpy', 'bstune._commands') if m in sys.modules) or 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_training_and_the_study_layer_load_without_scipy() -> None:
    """Every trial process imports them; SciPy (a second or more) loads only where an interval or a fit is made."""
    code = "import sys, bstune.study, bstune.training, bstune.analysis; sys.exit('scipy' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
