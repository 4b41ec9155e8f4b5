"""Optimizer specs and the SGD temperature."""

from __future__ import annotations

import pytest
import torch

from bstune.errors import ConfigError
from bstune.optim import OptimizerSpec, temperature


@pytest.mark.parametrize(
    ("family", "cls"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_builds_each_family(family: str, cls: type) -> None:
    opt = OptimizerSpec.coerce(family).build(torch.nn.Linear(2, 2).parameters(), lr=0.1, weight_decay=0.01)
    assert isinstance(opt, cls) and opt.param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"family": "rmsprop"}, "family"),
        ({"momentum": 1.0}, "momentum"),
        ({"family": "adam", "momentum": 0.9}, "momentum"),
        ({"nesterov": True}, "nesterov"),
        ({"weight_decay": -1}, "weight_decay"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"eps": 0}, "eps"),
    ],
)
def test_bad_specs_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        OptimizerSpec(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_temperature_includes_momentum() -> None:
    assert temperature(0.1, 10) == pytest.approx(0.01)
    assert temperature(0.1, 10, momentum=0.9) == pytest.approx(0.1)  # effective lr η/(1−m)
    with pytest.raises(ConfigError, match="temperature: batch_size: must be positive, got 0"):
        temperature(0.1, 0)
    with pytest.raises(ConfigError, match=r"temperature: momentum: must be in \[0, 1\), got 1.0"):
        temperature(0.1, 10, momentum=1.0)
