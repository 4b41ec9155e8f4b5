"""Job submission pieces that need no cluster (submit/status/fetch against a real one: tests/ray/)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bstune.errors import ConfigError
from bstune.jobs import (
    JOB_SPEC_VAR,
    RESULT_BEGIN,
    RESULT_END,
    JobFailedError,
    failure_line,
    job_spec,
    result_from_logs,
    status,
    submit,
)


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


def test_submit_checks_the_space_before_the_cluster_sees_it(tmp_path: Path) -> None:
    """A typo in the space was submitted, the job id printed with exit 0, and `bstune status` said only FAILED."""
    space = tmp_path / "bad.yaml"
    space.write_text("name: s\nbatch_size: {min: 4, mx: 128}\nlr: {min: 0.001, max: 1.0}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: batch_size.mx: unknown key"):
        submit("examples/digits_mlp.py", space=space, address="http://127.0.0.1:1")  # nothing answers there
    assert failure_line("ray noise\nbstune: error: bad.yaml: batch_size.mx: unknown key\n--- done\n") == (
        "bstune: error: bad.yaml: batch_size.mx: unknown key"
    )
    assert failure_line("Traceback\nValueError: boom\n") == "ValueError: boom" and failure_line("") is None


def test_a_jobs_address_where_nothing_answers_is_an_error_at_once() -> None:
    """A dashboard address without http:// was retried for 45 s as a GCS address, then a raw RpcError."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(
        ConfigError, match=rf"address: cannot reach the Ray Jobs API .*nothing answers at 127.0.0.1:{port}"
    ):
        status("raysubmit_x", address=f"127.0.0.1:{port}")
    assert time.monotonic() - started < 10


def test_a_job_spec_becomes_the_run_the_cli_would_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client names settings; the entry point on the cluster turns them into `bstune run` by the CLI's parser."""
    from bstune import _cluster_job, cli

    (tmp_path / "task.py").write_text("print('hi')\n")
    (tmp_path / "space.yaml").write_text("name: s\n")
    out = tmp_path / "cluster_home" / "job1"
    spec = job_spec(
        tmp_path / "task.py",
        tmp_path / "space.yaml",
        out=str(out),
        trials=7,
        budget_samples=1234,
        seed=3,
        mode="baseline",
        resources={"gpu": 1.0},
        max_concurrent=2,
    )
    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(cli, "run_command", lambda args: seen.append(args) or 0)
    monkeypatch.chdir(tmp_path)
    assert _cluster_job.main({JOB_SPEC_VAR: json.dumps(spec)}) == 0
    (args,) = seen
    assert (args.command, args.script, args.space, args.backend, args.address) == (
        "run",
        "task.py",
        "space.yaml",
        "ray",
        "auto",
    )
    assert (args.trials, args.budget_samples, args.seed, args.mode) == (7, 1234, 3, "baseline")
    assert (args.resources, args.max_concurrent, args.out, args.print_result) == ({"gpu": 1.0}, 2, str(out), True)
    assert (out / "task.py").read_text() == "print('hi')\n" and (out / "space.yaml").read_text() == "name: s\n"
    assert Path.cwd() == out  # the study's folder is the job's working directory


def test_a_setting_the_cli_has_no_option_for_is_refused(tmp_path: Path) -> None:
    from bstune import _cluster_job

    (tmp_path / "task.py").write_text("")
    (tmp_path / "space.yaml").write_text("name: s\n")
    spec = job_spec(tmp_path / "task.py", tmp_path / "space.yaml", out=str(tmp_path / "o"), n_trials=7)
    with pytest.raises(ConfigError, match="`bstune run` has no option for 'n_trials'"):
        _cluster_job._run_args(spec, tmp_path / "o")


def test_a_dashboard_address_without_its_scheme_is_named_at_once(tmp_path: Path) -> None:
    """'--address 127.0.0.1:8267' (the dashboard's port, no http://): Ray took it for the cluster's GCS address,
    retried for 45 s and raised a raw RpcError. An HTTP server there now gets a one-line fix at once."""
    import http.server
    import socket
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501: HTTP
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()  # listens, never speaks HTTP (as a GCS port speaks gRPC)
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        with pytest.raises(ConfigError, match=rf"address: is the dashboard's address: write it http://{address}"):
            status("raysubmit_x", address=address)
        from bstune.jobs import _answers_http

        assert not _answers_http(f"127.0.0.1:{silent.getsockname()[1]}")
        assert not _answers_http(f"http://{address}")  # with its scheme: Ray's to read
    finally:
        server.shutdown()
        silent.close()
