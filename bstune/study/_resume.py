"""What must match for a stored study to resume: the settings it was run with.

A study's storage keeps the settings that shape its trials (mode, budget, seed,
milestones, objective, search space, task). A process that opens the same study with
other settings would mix trials of two different searches into one result, so it is
refused with the names of the settings that differ. Settings stored by an older bstune
are first read in today's terms.
"""

from __future__ import annotations

from typing import Any

import optuna

from bstune.errors import ConfigError

__all__ = ["check_settings", "check_stored"]

SETTINGS_ATTR = "bstune_settings"  # the study's user attribute holding them


def check_settings(study: optuna.Study, mine: dict[str, Any]) -> None:
    """Store ``mine`` on a new study; on a stored one, raise ``ConfigError`` unless they match.

    Example:
        >>> study = optuna.create_study(study_name="demo")
        >>> check_settings(study, {"budget_samples": 1000, "seed": 0})
        >>> check_settings(study, {"budget_samples": 2000, "seed": 0})
        Traceback (most recent call last):
        ...
        bstune.errors.ConfigError: Study: storage: study 'demo' in this storage was run with different settings (budget_samples); use the same settings to resume, or another study_name/storage
    """
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, mine)
    else:
        check_stored(stored, mine, f"study {study.study_name!r} in this storage", "storage")


def check_stored(stored: dict[str, Any], mine: dict[str, Any], what: str, field: str) -> None:
    """Raise ``ConfigError`` unless the settings ``what`` was stored with (read in today's terms) are ``mine``.

    Both backends call this: the embedded one with its storage's copy, the Ray one with
    the copy in its experiment folder.
    """
    stored = upgrade_settings(stored) or {}
    if stored != mine:
        diff = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
        raise ConfigError(
            f"{what} was run with different settings ({', '.join(diff)}); "
            f"use the same settings to resume, or another study_name/{field}",
            source="Study",
            field=field,
        )


def upgrade_settings(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """Settings stored by an older bstune, in today's terms, so that the check compares like with like.

    Studies stored before ``prior.lr_anchor`` existed anchored the LR rule at half the
    ceiling: they read as ``lr_anchor: 0.5``, and resume only with that setting (not
    silently under today's default).

    Example:
        >>> upgrade_settings({"space": {"prior": {"lr_width": 3.0}}})["space"]["prior"]
        {'lr_width': 3.0, 'lr_anchor': 0.5}
    """
    if stored is None:
        return None
    prior = stored.get("space", {}).get("prior")
    if isinstance(prior, dict) and "lr_anchor" not in prior:
        stored = {**stored, "space": {**stored["space"], "prior": {**prior, "lr_anchor": 0.5}}}
    return stored
