"""The names bstune writes into its stores live in ``bstune/_keys.py`` alone, with the values stored studies hold."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from bstune import _keys

PACKAGE = Path(__file__).resolve().parents[1] / "bstune"
STORE_NAME = re.compile(r"bstune[_:][A-Za-z_]*(\.json)?")  # bstune_plan, bstune:owner, bstune_study.json, bstune_user_


def store_names(source: str) -> list[str]:
    """String constants (f-string parts included) that are whole bstune store names, with their lines."""
    return [
        f"{node.lineno}: {node.value!r}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and STORE_NAME.fullmatch(node.value)
    ]


def test_the_scan_sees_a_key_and_an_f_string_prefix_but_not_prose() -> None:
    source = 'a = {"bstune_plan": 1}\nb = f"bstune_user_{x}"\nc = "bstune: error: bad"\nd = "~/bstune_jobs/"'
    assert store_names(source) == ["1: 'bstune_plan'", "2: 'bstune_user_'"]


def test_no_module_but_keys_spells_a_store_name() -> None:
    found = {
        str(path.relative_to(PACKAGE.parent)): names
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "_keys.py" and (names := store_names(path.read_text()))
    }
    assert found == {}


def test_the_stored_values_stay_as_older_studies_hold_them() -> None:
    """Changing one of these orphans every study stored before (it would no longer resume)."""
    assert {name: getattr(_keys, name) for name in _keys.__all__} == {
        "DESCRIPTION_ATTR": "description",
        "DIRECTIONS_ATTR": "bstune_directions",
        "FROM_PROBE_ATTR": "from_probe",
        "HEARTBEAT_KEY": "bstune:heartbeat",
        "JOB_SCRIPT_KEY": "bstune_script",
        "JOB_SPACE_KEY": "bstune_space",
        "OUTCOME_FILE": "outcome.json",
        "OWNER_KEY": "bstune:owner",
        "PLAN_KEY": "bstune_plan",
        "PROBE_ATTR": "bstune_probe",
        "RESCORED_ATTR": "bstune_rescored",
        "RESCORED_FILE": "bstune_rescored.json",
        "CRITICAL_ATTR": "bstune_critical",
        "CRITICAL_FILE": "bstune_critical.json",
        "SCRIPT_MODULE_PREFIX": "bstune_user_",
        "SETTINGS_ATTR": "bstune_settings",
        "STATE_FILE": "bstune_study.json",
        "TRIAL_NUMBER_KEY": "bstune_trial_number",
    }
