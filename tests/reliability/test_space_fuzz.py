"""Fuzzing the search-space loader: whatever comes in, a SearchSpace or one ConfigError comes out.

Hypothesis feeds arbitrary values, mutations of a valid space and YAML text with
garbage spliced in; anything that loads must round-trip through ``to_dict``.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bstune.errors import ConfigError
from bstune.space import SearchSpace
from tests.test_space import BASE, DELETE

WORDS = st.sampled_from(
    [
        *BASE,
        *BASE["params"],
        "min", "max", "type", "low", "high", "log", "choices", "family", "momentum", "betas", "nesterov", "eps",
        "batch_width", "lr_width", "adam_alpha", "lr_anchor", "batch_round", "float", "int", "categorical", "sgd", "adamw",
        "grad_clip", "final_lr_ratio", "model.x", "model.", "1e-4", "-3", "nan", "inf", "cosine", "",
    ]
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | WORDS
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(WORDS | st.text(max_size=4), inner, max_size=4),
    max_leaves=16,
)


def outcome(build: Any) -> None:
    try:
        space = build()
    except ConfigError:
        return
    assert isinstance(space, SearchSpace)
    assert SearchSpace.from_dict(space.to_dict()) == space


def key_paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            paths += key_paths(value, (*prefix, key))
    return paths


BASE_PATHS = key_paths(BASE)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(VALUES)
def test_fuzz_from_dict_any_value(data: Any) -> None:
    outcome(lambda: SearchSpace.from_dict(data))


@FAST
@given(st.lists(st.tuples(st.sampled_from(BASE_PATHS), VALUES | st.just(DELETE)), min_size=1, max_size=3))
def test_fuzz_from_dict_mutated(edits: list[tuple[tuple[str, ...], Any]]) -> None:
    data = copy.deepcopy(BASE)
    for path, value in edits:
        node = data
        for key in path[:-1]:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            if isinstance(node, dict):
                if value is DELETE:
                    node.pop(path[-1], None)
                else:
                    node[path[-1]] = value
    outcome(lambda: SearchSpace.from_dict(data))


YAML_TEXT = st.text(
    alphabet=st.sampled_from(list("abnm:-_ {}[],\n\t#&*!|>'\"%@`?019.e")) | st.characters(), max_size=80
)
BASE_YAML = yaml.safe_dump(BASE, sort_keys=False)


@settings(FAST, max_examples=150)
@given(YAML_TEXT, st.integers(0, len(BASE_YAML)), st.integers(0, 12))
def test_fuzz_from_yaml_text(garbage: str, at: int, cut: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for text in (garbage, BASE_YAML[:at] + garbage + BASE_YAML[at + cut :]):
            path = Path(tmp) / "fuzz.yaml"
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
            outcome(lambda path=path: SearchSpace.from_yaml(path))
