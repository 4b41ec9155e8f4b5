"""What must match for a stored study to resume: the settings it was run with.

A study's storage keeps the settings that shape its trials (mode, budget, seed,
milestones, objective, search space, task, pruner). A process that opens the same study with
other settings would mix trials of two different searches into one result, so it is
refused with each setting that differs, its stored value and the new one. Settings
stored by an older bstune are first read in today's terms.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import optuna

from bstune._keys import SETTINGS_ATTR
from bstune.errors import ConfigError
from bstune.optim import OptimizerSpec
from bstune.space import PriorSettings

__all__ = ["check_settings", "settings_mismatch"]


def check_settings(study: optuna.Study, mine: dict[str, Any]) -> None:
    """Store ``mine`` on a new study; on a stored one, raise ``ConfigError`` unless they match.

    Example:
        >>> study = optuna.create_study(study_name="demo")
        >>> check_settings(study, {"budget_samples": 1000, "seed": 0})
        >>> check_settings(study, {"budget_samples": 2000, "seed": 0})
        Traceback (most recent call last):
        ...
        bstune.errors.ConfigError: Study: storage: study 'demo' in this storage was run with different settings: budget_samples: the stored study used 1000, this run asks 2000; use the same settings to resume, or another study_name or storage (the CLI's --study-name or --out)
    """
    stored = upgrade_settings(study.user_attrs.get(SETTINGS_ATTR))
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, mine)
    else:
        error = settings_mismatch(
            stored,
            mine,
            f"study {study.study_name!r} in this storage",
            "study_name or storage (the CLI's --study-name or --out)",
        )
        if error is not None:
            raise ConfigError(error, source="Study", field="storage")


def settings_mismatch(stored: Mapping[str, Any], mine: Mapping[str, Any], what: str, elsewhere: str) -> str | None:
    """Why a study stored with ``stored`` settings cannot resume with ``mine``; None when they match.

    Names each setting that differs (nested ones dotted, ``space.batch_size.max``) with the
    stored value and the new one; ``what`` names the stored study, ``elsewhere`` the options
    that start a new one instead. Shared by the embedded and the Ray backend.

    Example:
        >>> settings_mismatch({"seed": 0, "space": {"lr": 1}}, {"seed": 0, "space": {"lr": 2}}, "study 'x'", "--out")
        "study 'x' was run with different settings: space.lr: the stored study used 1, this run asks 2; use the same settings to resume, or another --out"
    """
    # a setting an older bstune did not store is not known to differ: such a study resumes as before
    stored = {**{k: mine[k] for k in _STORED_SINCE if k in mine and k not in stored}, **stored}
    diffs = _differences(stored, mine, "")
    if not diffs:
        return None
    return (
        f"{what} was run with different settings: {'; '.join(diffs)}; "
        f"use the same settings to resume, or another {elsewhere}"
    )


_UNSET = object()
# top-level settings stored since a later bstune (the pruner: a resumed study reported the new one for trials the
# old one had pruned, or not)
_STORED_SINCE = ("pruner",)


def _differences(stored: Mapping[str, Any], mine: Mapping[str, Any], prefix: str) -> list[str]:
    out = []
    for key in sorted(set(stored) | set(mine)):
        old, new = stored.get(key, _UNSET), mine.get(key, _UNSET)
        if old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out += _differences(old, new, f"{prefix}{key}.")
        else:
            where = f"{prefix}{key}"
            out.append(f"{where}: the stored study used {_shown(old, where)}, this run asks {_shown(new, where)}")
    return out


def _shown(value: object, where: str) -> str:
    """A setting's value as the mismatch names it; one not stored is its default (the space leaves out an
    optimizer setting at its default: say which value that is)."""
    if value is _UNSET:
        field = where.removeprefix("space.optimizer.")
        default = next((f.default for f in dataclasses.fields(OptimizerSpec) if f.name == field), _UNSET)
        if where.startswith("space.optimizer.") and default is not _UNSET:
            return f"the default, {_shown(list(default) if isinstance(default, tuple) else default, where)}"
        return "nothing (not set)"
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


_BAND_ONLY = "none: the search stayed in the band (bstune before the soft prior)"


def upgrade_settings(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """Settings stored by an older bstune, in today's terms, so that the check compares like with like.

    Studies stored before ``prior.lr_anchor`` existed anchored the LR rule at half the
    ceiling: they read as ``lr_anchor: 0.5``, and resume only with that setting (not
    silently under today's default). Prior-mode studies stored before the soft prior
    (``prior.weight``) searched inside the band alone, in coordinates that no longer mean
    the same: they do not resume (the mismatch names ``space.prior.weight``). A baseline
    study never used the prior: it reads as today's defaults. Before ``prior.batch_top``
    the band's top was B_noise, which is its default.

    Example:
        >>> upgrade_settings({"space": {"prior": {"lr_width": 3.0, "lr_anchor": 0.25}}})["space"]["prior"]["weight"]
        'none: the search stayed in the band (bstune before the soft prior)'
        >>> upgrade_settings({"space": {"prior": {"lr_width": 3.0}}})["space"]["prior"]["lr_anchor"]
        0.5
    """
    if stored is None:
        return None
    prior = stored.get("space", {}).get("prior")
    if isinstance(prior, dict) and "lr_anchor" not in prior:
        prior = {**prior, "lr_anchor": 0.5}
    if isinstance(prior, dict) and "batch_top" not in prior:
        prior = {**prior, "batch_top": 1.0}  # the band's top was B_noise: today's default
    if isinstance(prior, dict) and "weight" not in prior:
        today = PriorSettings()
        weight = today.weight if stored.get("mode") == "baseline" else _BAND_ONLY
        prior = {"lr_search_width": today.lr_search_width, **prior, "weight": weight}
    if isinstance(prior, dict):
        stored = {**stored, "space": {**stored["space"], "prior": prior}}
    return stored
