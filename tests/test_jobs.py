"""Job submission pieces that need no cluster (submit/status/fetch against a real one: tests/ray/)."""

from __future__ import annotations

import json

import pytest

from bstune.errors import ConfigError
from bstune.jobs import RESULT_BEGIN, RESULT_END, JobFailedError, result_from_logs, submit


def test_result_is_read_back_from_the_job_logs() -> None:
    data = {"study_name": "s", "trials": [1, 2]}
    logs = f"noise\n{RESULT_BEGIN}\n{json.dumps({'old': 1})}\n{RESULT_END}\n{RESULT_BEGIN}\n{json.dumps(data)}\n{RESULT_END}\n"
    assert result_from_logs(logs) == data  # the last one printed wins


def test_logs_without_a_result_say_so() -> None:
    with pytest.raises(JobFailedError, match="hold no result"):
        result_from_logs("Traceback ...\nValueError: boom\n")


def test_submit_names_a_missing_file(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="space: no such file"):
        submit("examples/digits_mlp.py", space="no/such.yaml", address="http://127.0.0.1:1")
