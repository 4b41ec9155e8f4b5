"""Search spaces: YAML round trips, validation messages, Optuna distributions.

The loader's fuzzing and its refusal of code-running YAML tags are in ``tests/reliability/``.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bstune.errors import ConfigError
from bstune.optim import OptimizerSpec
from bstune.space import ParamSpec, PriorSettings, SearchSpace

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
SPACE_FILES = sorted(SPACES_DIR.glob("*.yaml"))

BASE: dict[str, Any] = {
    "name": "base",
    "optimizer": {"family": "sgd", "momentum": 0.9, "weight_decay": 0.0},
    "batch_size": {"min": 8, "max": 1024},
    "lr": {"min": 1.0e-4, "max": 3.0},
    "prior": {"batch_width": 4, "lr_width": 3, "adam_alpha": 0.8, "lr_anchor": 0.25, "batch_round": 1},
    "params": {
        "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
        "warmup_fraction": {"type": "float", "low": 0.0, "high": 0.2},
        "schedule": {"type": "categorical", "choices": ["constant", "cosine"]},
        "model.hidden": {"type": "int", "low": 32, "high": 256, "log": True},
    },
}
DELETE = object()


def edited(*edits: tuple[tuple[str, ...], Any]) -> dict[str, Any]:
    """BASE with each (key path, value) set, or the key removed when the value is DELETE."""
    data = copy.deepcopy(BASE)
    for path, value in edits:
        node = data
        for key in path[:-1]:
            node = node[key]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return data


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- round trips ----------------------------------------------------------------------------


def test_the_shipped_files_are_there() -> None:
    assert {p.stem for p in SPACE_FILES} >= {"mlp_classifier", "cnn_classifier", "transformer_lm"}


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.stem)
def test_shipped_file_round_trips(path: Path, tmp_path: Path) -> None:
    space = SearchSpace.from_yaml(path)
    assert space.name == path.stem and space.source == str(path)
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert SearchSpace.from_yaml(write(tmp_path, space.to_yaml())) == space
    out = tmp_path / "written.yaml"
    assert space.to_yaml(out) == out.read_text(encoding="utf-8")
    assert SearchSpace.from_yaml(out) == space
    for p in space.params:
        assert isinstance(p.to_optuna(), optuna.distributions.BaseDistribution)


def test_shipped_files_say_what_the_docs_say() -> None:
    cnn = SearchSpace.from_yaml(SPACES_DIR / "cnn_classifier.yaml")
    assert cnn.optimizer.family == "sgd" and cnn.optimizer.momentum == 0.9 and cnn.prior.batch_round == 8
    assert "weight_decay" in {p.name for p in cnn.params}
    lm = SearchSpace.from_yaml(SPACES_DIR / "transformer_lm.yaml")
    assert lm.optimizer.family == "adamw"
    assert {"warmup_fraction", "weight_decay"} <= {p.name for p in lm.params}


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.stem)
def test_shipped_files_keep_the_adam_rule_the_grids_gave(path: Path) -> None:
    """A file users copy must not pin an exponent the LR-rule benchmark rejected (0.5 lies outside the
    Adam and AdamW grids' intervals, benchmarks/results/lr_rule.md): it keeps the default."""
    assert SearchSpace.from_yaml(path).prior.adam_alpha == PriorSettings().adam_alpha == 0.8


def test_base_dict_reads_as_written() -> None:
    space = SearchSpace.from_dict(BASE)
    assert (space.batch_min, space.batch_max, space.lr_min, space.lr_max) == (8, 1024, 1e-4, 3.0)
    assert space.optimizer == OptimizerSpec("sgd", momentum=0.9)
    assert space.prior == PriorSettings()
    assert [p.name for p in space.params] == ["weight_decay", "warmup_fraction", "schedule", "model.hidden"]
    assert SearchSpace.from_dict(space.to_dict()) == space


def test_defaults_need_only_a_name() -> None:
    space = SearchSpace.from_dict({"name": "bare"})
    assert space == SearchSpace("bare")
    assert space.batch_max is None and space.params == () and space.optimizer == OptimizerSpec()
    assert SearchSpace.from_dict(space.to_dict()) == space


def test_source_labels_errors_but_not_equality(tmp_path: Path) -> None:
    path = write(tmp_path, "name: base\n")
    assert SearchSpace.from_yaml(path) == SearchSpace("base")


def test_numeric_strings_are_numbers(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-4 (no dot) as the string "1e-4"
    text = (
        "name: s\nlr: {min: 1e-4, max: 3}\nparams:\n  weight_decay: {type: float, low: 1e-6, high: 1e-2, log: true}\n"
    )
    space = SearchSpace.from_yaml(write(tmp_path, text))
    assert space.lr_min == 1e-4 and space.params[0].low == 1e-6
    assert SearchSpace.from_dict({"name": "s", "batch_size": {"max": "1e3"}}).batch_max == 1000


def test_optimizer_as_a_bare_family_name() -> None:
    assert SearchSpace.from_dict({"name": "s", "optimizer": "AdamW"}).optimizer == OptimizerSpec("adamw")


def test_searched_param_may_also_be_fixed_in_optimizer() -> None:
    data = edited((("params", "momentum"), {"type": "float", "low": 0.5, "high": 0.99}))
    space = SearchSpace.from_dict(data)
    assert space.optimizer.momentum == 0.9 and space.params[-1].name == "momentum"


def test_coerce(tmp_path: Path) -> None:
    space = SearchSpace.from_dict(BASE)
    assert SearchSpace.coerce(space) is space
    assert SearchSpace.coerce(BASE) == space
    path = write(tmp_path, space.to_yaml())
    assert SearchSpace.coerce(path) == space and SearchSpace.coerce(str(path)) == space
    with pytest.raises(ConfigError, match="expected a SearchSpace, a YAML path or a mapping, got int 5"):
        SearchSpace.coerce(5)  # type: ignore[arg-type]


# -- validation: each error names the source and the dotted key -----------------------------

ERRORS = [
    # (edits, field, fragment of the reason)
    ((("batch_size", "min"), 0), "batch_size.min", "positive integer, got 0"),
    ((("batch_size", "min"), -4), "batch_size.min", "positive integer, got -4"),
    ((("batch_size", "max"), 0), "batch_size.max", "positive integer, got 0"),
    ((("batch_size", "min"), 2048), "batch_size.min", "min=2048, max=1024"),
    ((("batch_size", "min"), "eight"), "batch_size.min", "expected an integer, got str 'eight'"),
    ((("batch_size", "min"), 8.5), "batch_size.min", "expected an integer, got float 8.5"),
    ((("batch_size", "min"), True), "batch_size.min", "expected an integer, got bool True"),
    ((("batch_size", "maximum"), 5), "batch_size.maximum", "known keys: min, max"),
    ((("batch_size",), 64), "batch_size", "expected a mapping with keys min, max, got int 64"),
    ((("lr", "min"), "abc"), "lr.min", "expected a number, got str 'abc'"),
    ((("lr", "min"), 0.0), "lr.min", "> 0, got 0.0"),
    ((("lr", "max"), -1.0), "lr.max", "> 0, got -1.0"),
    ((("lr", "min"), 5.0), "lr.min", "min=5.0, max=3.0"),
    ((("lr", "max"), None), "lr.max", "expected a number, got NoneType None"),
    ((("lr", "max"), float("inf")), "lr.max", "finite"),
    ((("lr",), [1, 2]), "lr", "expected a mapping"),
    ((("optimizer", "family"), "rmsprop"), "optimizer.family", "sgd, adam, adamw, got str 'rmsprop'"),
    ((("optimizer", "momentum"), 1.5), "optimizer.momentum", "[0, 1), got 1.5"),
    ((("optimizer", "momentum"), "high"), "optimizer.momentum", "expected a number, got str 'high'"),
    ((("optimizer", "lr"), 0.1), "optimizer.lr", "unknown key 'lr'; known keys: family, momentum"),
    ((("optimizer", "betas"), [0.9]), "optimizer.betas", "two numbers"),
    ((("optimizer", "nesterov"), "yes"), "optimizer.nesterov", "true or false, got str 'yes'"),
    ((("optimizer",), ["sgd"]), "optimizer", "expected a mapping"),
    ((("prior", "batch_width"), 1), "prior.batch_width", "> 1, got 1.0"),
    ((("prior", "lr_width"), 0.5), "prior.lr_width", "> 1, got 0.5"),
    ((("prior", "batch_top"), 0), "prior.batch_top", "(0, 4] (the band's top as a multiple of B_noise), got 0"),
    ((("prior", "batch_top"), "half"), "prior.batch_top", "expected a number, got str 'half'"),
    ((("prior", "adam_alpha"), 0.3), "prior.adam_alpha", "[0.5, 1], got 0.3"),
    ((("prior", "batch_round"), 0), "prior.batch_round", "positive integer, got 0"),
    ((("prior", "batch_round"), 3000), "prior.batch_round", "no multiple of 3000"),
    ((("prior", "lr_anchor"), 0), "prior.lr_anchor", "(0, 1] (a fraction of the LR ceiling), got 0"),
    ((("prior", "lr_anchor"), 2.0), "prior.lr_anchor", "(0, 1] (a fraction of the LR ceiling), got 2.0"),
    (
        (("prior", "width"), 2),
        "prior.width",
        "known keys: batch_width, batch_top, lr_width, adam_alpha, lr_anchor, batch_round, lr_search_width, weight",
    ),
    ((("prior", "lr_search_width"), 2), "prior.lr_search_width", "a number >= lr_width (3), got 2"),
    ((("prior", "weight"), -1), "prior.weight", "a number >= 0 (trials' worth of prior draws), got -1"),
    ((("prior", "weight"), "many"), "prior.weight", "expected a number, got str 'many'"),
    ((("params", "weight_decay", "low"), 1.0), "params.weight_decay.low", "low=1.0, high=0.01"),
    ((("params", "weight_decay", "low"), 0.0), "params.weight_decay.low", "> 0 when log is true"),
    ((("params", "weight_decay", "low"), "abc"), "params.weight_decay.low", "expected a number, got str 'abc'"),
    ((("params", "weight_decay", "high"), DELETE), "params.weight_decay.high", "needs low and high"),
    ((("params", "weight_decay", "type"), "double"), "params.weight_decay.type", "float, int, categorical"),
    ((("params", "weight_decay", "type"), DELETE), "params.weight_decay", "missing key 'type'"),
    ((("params", "weight_decay", "choices"), ["a"]), "params.weight_decay.choices", "only for type 'categorical'"),
    ((("params", "weight_decay", "step"), 2), "params.weight_decay.step", "known keys: type, low, high, log"),
    ((("params", "weight_decay"), "float"), "params.weight_decay", "expected a mapping"),
    ((("params", "warmup_fraction", "high"), 0.7), "params.warmup_fraction.high", "[0, 0.5], got float 0.7"),
    ((("params", "schedule", "choices"), []), "params.schedule.choices", "non-empty list"),
    ((("params", "schedule", "choices"), ["cosine", "step"]), "params.schedule.choices", "constant, cosine, linear"),
    ((("params", "schedule", "low"), 1.0), "params.schedule.low", "not used by type 'categorical'"),
    (
        (("params", "schedule"), {"type": "float", "low": 0.0, "high": 1.0}),
        "params.schedule.type",
        "must be of kind categorical",
    ),
    ((("params", "model.hidden", "low"), 32.5), "params.model.hidden.low", "expected an integer"),
    ((("params", "model.hidden", "low"), 0), "params.model.hidden.low", ">= 1 when log is true"),
    ((("params", "model.hidden", "log"), "yes"), "params.model.hidden.log", "true or false"),
    (
        (("params", "model.act"), {"type": "categorical", "choices": [[1, 2]]}),
        "params.model.act.choices",
        "string, finite number or bool",
    ),
    (
        (("params", "model.act"), {"type": "categorical", "choices": ["relu", "relu"]}),
        "params.model.act.choices",
        "repeat",
    ),
    ((("params", "dropout"), {"type": "float", "low": 0.0, "high": 0.5}), "params.dropout", "unknown parameter"),
    ((("params", "model."), {"type": "int", "low": 1, "high": 2}), "params.model.", "model.<kwarg>"),
    ((("params", "grad_clip"), {"type": "categorical", "choices": [0, 1.0]}), "params.grad_clip.choices", "(0, ∞)"),
    ((("params",), ["weight_decay"]), "params", "expected a mapping of names to settings"),
    ((("name",), DELETE), "name", "missing"),
    ((("name",), ""), "name", "non-empty string"),
    ((("name",), 5), "name", "non-empty string, got int 5"),
    ((("colour",), "red"), "colour", "unknown key 'colour'; known keys: name, optimizer, batch_size"),
]


@pytest.mark.parametrize("via", ["dict", "yaml"])
@pytest.mark.parametrize(("edit", "field", "fragment"), ERRORS, ids=[f"{e[1]}:{e[2][:24]}" for e in ERRORS])
def test_invalid_setting_is_named(
    edit: tuple[tuple[str, ...], Any], field: str, fragment: str, via: str, tmp_path: Path
) -> None:
    data = edited(edit)
    with pytest.raises(ConfigError) as info:
        if via == "dict":
            source = "<dict>"
            SearchSpace.from_dict(data)
        else:
            path = write(tmp_path, yaml.safe_dump(data, sort_keys=False))
            source = str(path)
            SearchSpace.from_yaml(path)
    err = info.value
    assert (err.source, err.field) == (source, field)
    assert str(err).startswith(f"{source}: {field}: ")
    assert fragment in err.reason


def test_momentum_param_needs_sgd() -> None:
    data = edited(
        (("optimizer",), {"family": "adamw"}),
        (("params", "momentum"), {"type": "float", "low": 0.5, "high": 0.9}),
    )
    with pytest.raises(ConfigError, match=r"^<dict>: params\.momentum: .*'sgd' only, this space uses 'adamw'"):
        SearchSpace.from_dict(data)


def test_top_level_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^<dict>: expected a mapping with keys name, .* got list"):
        SearchSpace.from_dict(["name", "x"])  # type: ignore[arg-type]


# -- YAML files ------------------------------------------------------------------------------


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: s\nbatch_size:\n  min: 8\n   max: 16\n")
    with pytest.raises(ConfigError, match=r"line 4, column \d+") as info:
        SearchSpace.from_yaml(path)
    assert info.value.source == str(path) and str(info.value).startswith(f"{path}: invalid YAML")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- name\n- s\n", "expected a mapping with keys name, optimizer"),
        ("just a string\n", "expected a mapping"),
        ("name: s\nlr: {min: 2020-13-45}\n", "invalid YAML value"),
        ("[" * 1000, "nested too deeply"),
    ],
)
def test_unusable_file_contents(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=fragment) as info:
        SearchSpace.from_yaml(path)
    assert info.value.source == str(path)


def test_missing_file_directory_and_binary(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file") as info:
        SearchSpace.from_yaml(tmp_path / "nope.yaml")
    assert info.value.source == str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        SearchSpace.from_yaml(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        SearchSpace.from_yaml(binary)


def test_anchor_bomb_gives_a_short_message() -> None:
    bomb: list[Any] = ["x"] * 10
    for _ in range(8):  # 10**9 leaves through shared references, as YAML anchors build it
        bomb = [bomb] * 10
    with pytest.raises(ConfigError) as info:
        SearchSpace.from_dict({"name": "s", "lr": {"min": bomb}})
    assert len(str(info.value)) < 300


# -- ParamSpec / PriorSettings built directly ------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "dist"),
    [
        (
            ParamSpec("weight_decay", "float", 1e-6, 1e-2, log=True),
            optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
        ),
        (ParamSpec("warmup_fraction", "float", 0, 0.2), optuna.distributions.FloatDistribution(0.0, 0.2)),
        (ParamSpec("model.hidden", "int", 32, 256, log=True), optuna.distributions.IntDistribution(32, 256, log=True)),
        (ParamSpec("model.layers", "int", 1, 4), optuna.distributions.IntDistribution(1, 4)),
        (
            ParamSpec("schedule", "categorical", choices=("constant", "cosine")),
            optuna.distributions.CategoricalDistribution(("constant", "cosine")),
        ),
        (
            ParamSpec("model.bias", "categorical", choices=(True, False)),
            optuna.distributions.CategoricalDistribution((True, False)),
        ),
    ],
)
def test_to_optuna(spec: ParamSpec, dist: optuna.distributions.BaseDistribution) -> None:
    assert spec.to_optuna() == dist
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask({spec.name: spec.to_optuna()})
        value = trial.params[spec.name]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            assert value in dist.choices
        else:
            assert dist.low <= value <= dist.high  # type: ignore[attr-defined]
        study.tell(trial, 0.0)


def test_param_spec_normalises_types() -> None:
    p = ParamSpec("warmup_fraction", "float", 0, 1 / 5)
    assert isinstance(p.low, float) and p.low == 0.0
    assert ParamSpec("model.act", "categorical", choices=["relu", "gelu"]).choices == ("relu", "gelu")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"name": "momentum", "kind": "float", "low": 0.5, "high": 0.1}, "momentum.low", "low=0.5, high=0.1"),
        ({"name": "weight_decay", "kind": "float", "low": 0.0, "high": 0.1, "log": True}, "weight_decay.low", "> 0"),
        ({"name": "model.width", "kind": "int", "low": 1.5, "high": 4}, "model.width.low", "integer"),
        ({"name": "model.width", "kind": "int", "low": 1, "high": None}, "model.width.high", "integer"),
        ({"name": "model.width", "kind": "float", "low": 1.0, "high": float("nan")}, "model.width.high", "finite"),
        (
            {"name": "model.width", "kind": "float", "low": 0.0, "high": 1.0, "choices": (1,)},
            "model.width.choices",
            "only",
        ),
        ({"name": "model.act", "kind": "categorical", "choices": ()}, "model.act.choices", "non-empty"),
        ({"name": "model.act", "kind": "categorical", "choices": "relu"}, "model.act.choices", "non-empty list"),
        ({"name": "model.act", "kind": "categorical", "choices": (None,)}, "model.act.choices", "NoneType"),
        ({"name": "model.act", "kind": "categorical", "choices": ("a",), "low": 1.0}, "model.act.low", "not used"),
        ({"name": "model.act", "kind": "bool"}, "model.act.kind", "float, int, categorical"),
        ({"name": "lr", "kind": "float", "low": 0.1, "high": 1.0}, "lr", "unknown parameter 'lr'"),
        ({"name": "batch_size", "kind": "int", "low": 8, "high": 64}, "batch_size", "unknown parameter"),
        ({"name": "model.2x", "kind": "int", "low": 8, "high": 64}, "model.2x", "unknown parameter"),
        ({"name": "momentum", "kind": "int", "low": 0, "high": 0}, "momentum.kind", "float or categorical"),
        ({"name": "final_lr_ratio", "kind": "categorical", "choices": ("0",)}, "final_lr_ratio.choices", "[0, 1]"),
    ],
)
def test_param_spec_rejects(kwargs: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        ParamSpec(**kwargs)
    assert (info.value.source, info.value.field) == ("ParamSpec", field)
    assert fragment in info.value.reason


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_width": 1.0}, "batch_width"),
        ({"lr_width": float("inf")}, "lr_width"),
        ({"adam_alpha": 1.5}, "adam_alpha"),
        ({"lr_anchor": -0.1}, "lr_anchor"),
        ({"lr_anchor": "a quarter"}, "lr_anchor"),
        ({"batch_round": 0}, "batch_round"),
        ({"batch_round": 8.0}, "batch_round"),
        ({"lr_search_width": float("nan")}, "lr_search_width"),
        ({"lr_width": 10.0, "lr_search_width": 5.0}, "lr_search_width"),
        ({"weight": float("inf")}, "weight"),
        ({"weight": True}, "weight"),
    ],
)
def test_prior_settings_reject(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        PriorSettings(**kwargs)
    assert (info.value.source, info.value.field) == ("PriorSettings", field)


def test_search_space_checks_direct_construction() -> None:
    with pytest.raises(ConfigError, match=r"^<dict>: batch_size\.min: must be a positive integer, got 0"):
        SearchSpace("s", batch_min=0)
    p = ParamSpec("schedule", "categorical", choices=("cosine",))
    with pytest.raises(ConfigError, match=r"^spaces\.yaml: params\.schedule: listed twice"):
        SearchSpace("s", params=(p, p), source="spaces.yaml")


FINITE = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=100, deadline=None)
@given(
    batch_min=st.integers(1, 512),
    batch_span=st.integers(0, 10_000) | st.none(),
    lr_min=st.floats(1e-300, 1e10),
    lr_factor=st.floats(1.0, 1e6),
    low=FINITE,
    span=st.floats(0.0, 1e300),
    choices=st.lists(
        st.text(max_size=6) | st.integers() | FINITE | st.booleans(),
        min_size=1,
        max_size=5,
        unique_by=lambda c: (type(c), c),
    ),
)
def test_valid_spaces_round_trip_through_yaml(
    batch_min: int, batch_span: int | None, lr_min: float, lr_factor: float, low: float, span: float, choices: list[Any]
) -> None:
    space = SearchSpace(
        name="fuzz",
        batch_min=batch_min,
        batch_max=None if batch_span is None else batch_min + batch_span,
        lr_min=lr_min,
        lr_max=min(lr_min * lr_factor, 1e300),
        params=(
            ParamSpec("model.a", "float", low, low + span if abs(low + span) < 1e308 else low),
            ParamSpec("model.b", "categorical", choices=tuple(choices)),
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "space.yaml"
        space.to_yaml(path)
        assert SearchSpace.from_yaml(path) == space


def test_fixed_names_what_the_space_leaves_one_value() -> None:
    space = SearchSpace.coerce(
        {
            "name": "s",
            "batch_size": {"min": 32, "max": 32},
            "lr": {"min": 0.01, "max": 0.1},
            "params": {
                "model.width": {"type": "int", "low": 8, "high": 8},
                "momentum": {"type": "categorical", "choices": [0.9]},
                "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
                "schedule": {"type": "categorical", "choices": ["cosine", "constant"]},
            },
        }
    )
    assert space.fixed == {"batch_size", "model.width", "momentum"}
    assert SearchSpace("s", lr_min=0.1, lr_max=0.1).fixed == {"lr"}
    assert SearchSpace("s").fixed == frozenset()  # batch_size.max unset: up to the training set
