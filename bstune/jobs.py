"""Submitting a study to a Ray cluster as a job, and fetching its result.

Goes through the Ray Jobs API (``JobSubmissionClient``, the dashboard's HTTP
address, ``http://head:8265``): the script, the search-space file and the settings
travel in the job's environment as one specification, which :mod:`bstune._cluster_job`
(the entry point on the cluster, beside the CLI) runs as ``bstune run ... --backend ray
--address auto`` with its output under ``~/bstune_jobs/<job id>`` there; the submitter may
detach. When the job ends, its ``result.json``
travels back through the job's logs (between two marker lines, so no shared file
system is needed) and :func:`fetch_report` writes it and the report locally.

Example (needs a running cluster)::

    job_id = bstune.submit("examples/digits_mlp.py", space="search_spaces/mlp_classifier.yaml",
                           address="http://127.0.0.1:8265", n_trials=16, budget_samples=30_000)
    bstune.status(job_id, address="http://127.0.0.1:8265")       # 'RUNNING', then 'SUCCEEDED'
    bstune.fetch_report(job_id, "runs/digits", address="http://127.0.0.1:8265")
"""

from __future__ import annotations

import base64
import json
import logging
import shlex
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bstune._keys import JOB_SCRIPT_KEY, JOB_SPACE_KEY
from bstune.errors import BstuneError, ConfigError

__all__ = [
    "JOB_SPEC_VAR",
    "RESULT_BEGIN",
    "RESULT_END",
    "JobFailedError",
    "fetch_report",
    "job_spec",
    "status",
    "submit",
]

logger = logging.getLogger(__name__)

RESULT_BEGIN = "----- bstune result.json begin -----"
RESULT_END = "----- bstune result.json end -----"


JOB_SPEC_VAR = "BSTUNE_JOB_SPEC"  # the job specification, read on the cluster by bstune._cluster_job


class JobFailedError(BstuneError):
    """A submitted study did not succeed, or its logs hold no result."""


_DASHBOARD = "(the dashboard address, e.g. http://head:8265)"


def _answers_http(address: str) -> bool:
    """True where ``address`` is a ``host:port`` without a scheme at which an HTTP server answers."""
    import http.client

    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return False
    connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=3)
    try:
        connection.request("GET", "/api/version")
        connection.getresponse()
    except (OSError, http.client.HTTPException):
        return False  # not HTTP (a GCS port speaks gRPC) or not answering: as Ray would take it
    finally:
        connection.close()
    return True


def _client(address: str) -> Any:
    from bstune.study import import_ray, unreachable, use_auth_token

    if (reason := unreachable(address)) is not None:  # Ray retries it for 45 s, then raises from deep inside
        raise ConfigError(f"cannot reach the Ray Jobs API {_DASHBOARD}: {reason}", source="address")
    if _answers_http(address):  # without its scheme, Ray takes a dashboard's address for the GCS's: 45 s, then fails
        raise ConfigError(f"is the dashboard's address: write it http://{address}", source="address")
    use_auth_token(address)  # before Ray is imported, which reads RAY_AUTH_MODE once
    ray = import_ray()
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except ray.exceptions.AuthenticationError as exc:
        raise ConfigError(
            f"the Ray Jobs API at {address!r} asks for the cluster's authentication token: "
            f"{str(exc).splitlines()[0]} (give it as RAY_AUTH_TOKEN or in ~/.ray/auth_token, with RAY_AUTH_MODE=token)",
            source="address",
        ) from exc
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"cannot reach the Ray Jobs API at {address!r} {_DASHBOARD}: {exc}", source="address"
        ) from exc
    except ray.exceptions.RpcError as exc:  # a host:port without http:// is taken for the cluster's GCS
        hint = f"; if it is the dashboard's, write it http://{address}" if "://" not in address else ""
        raise ConfigError(
            f"no Ray cluster answered at {address!r} {_DASHBOARD}: {str(exc).splitlines()[0]}{hint}", source="address"
        ) from exc


def job_spec(script: Path, space: Path, *, out: str, **settings: Any) -> dict[str, Any]:
    """What a submitted job carries: the two files' bytes, its output folder, and ``settings``.

    ``settings`` are named by the ``dest`` of the ``bstune run`` option each one sets
    (``trials``, ``budget_samples``, ...); :mod:`bstune._cluster_job` applies them to the
    command its CLI parser reads, and refuses a name that is no option.
    """
    return {
        "script_name": script.name,
        "space_name": space.name,
        "script": base64.b64encode(script.read_bytes()).decode(),
        "space": base64.b64encode(space.read_bytes()).decode(),
        "out": out,
        "settings": settings,
    }


def submit(
    script: str | Path,
    *,
    space: str | Path,
    address: str,
    n_trials: int = 40,
    budget_samples: int = 300_000,
    seed: int = 0,
    mode: str = "prior",
    resources_per_trial: Mapping[str, float] | None = None,
    max_concurrent: int | None = None,
    python: str = "python",
    runtime_env: Mapping[str, Any] | None = None,
    submission_id: str | None = None,
    agent_wait_s: float = 60.0,
) -> str:
    """Submit a study of ``script``'s task to the cluster; returns the job id at once.

    ``python`` is the interpreter on the cluster that has bstune installed;
    ``runtime_env`` is merged into the job's (add ``{"pip": [...]}`` where the
    cluster's image lacks bstune). A cluster whose job agent is still starting is
    retried for ``agent_wait_s`` seconds.
    """
    from bstune.space import SearchSpace

    script, space = Path(script), Path(space)
    for path, field in ((script, "script"), (space, "space")):
        if not path.is_file():
            raise ConfigError("no such file", source=str(path), field=field)
    SearchSpace.coerce(space)  # a typo in it is said here, not in the job's log after it failed on the cluster
    client = _client(address)
    submission_id = submission_id or f"bstune-{uuid.uuid4().hex[:12]}"
    spec = job_spec(
        script,
        space,
        out=f"~/bstune_jobs/{submission_id}",  # on the cluster, under its user's home
        trials=n_trials,
        budget_samples=budget_samples,
        seed=seed,
        mode=mode,
        resources=dict(resources_per_trial) if resources_per_trial else None,
        max_concurrent=max_concurrent,
    )
    command = [python, "-m", "bstune._cluster_job"]
    env = dict(runtime_env or {})
    env["env_vars"] = {**dict(env.get("env_vars", {})), JOB_SPEC_VAR: json.dumps(spec)}
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            job_id = client.submit_job(
                entrypoint=shlex.join(command),
                runtime_env=env,
                submission_id=submission_id,
                metadata={JOB_SCRIPT_KEY: script.name, JOB_SPACE_KEY: space.name},
            )
            break
        except RuntimeError as exc:  # the Jobs API answers errors as RuntimeError(status, text)
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                time.sleep(2)  # a node that just started has no job agent yet
                continue
            raise JobFailedError(f"the cluster at {address} refused the job: {exc}") from exc
    logger.info("submitted %s as job %s to %s", script, job_id, address)
    return str(job_id)


def status(job_id: str, *, address: str) -> str:
    """The job's status: ``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED`` or ``STOPPED``."""
    client = _client(address)
    try:
        return str(client.get_job_status(job_id).value)
    except RuntimeError as exc:
        raise ConfigError(f"no job {job_id!r} at {address}: {exc}", source="job") from exc


def failure(job_id: str, *, address: str) -> str | None:
    """Why a failed job failed: bstune's error line from its log, else the log's last line (``None``: empty)."""
    return failure_line(str(_client(address).get_job_logs(job_id)))


def failure_line(logs: str) -> str | None:
    """bstune's last error line in a job's log, else the log's last line; ``None`` for an empty log.

    Example:
        >>> failure_line("Traceback ...\\nbstune: error: s.yaml: batch_size.mx: unknown key\\n")
        'bstune: error: s.yaml: batch_size.mx: unknown key'
    """
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("bstune: error:")]
    return said[-1] if said else (lines[-1] if lines else None)


def result_from_logs(logs: str) -> dict[str, Any]:
    """The ``result.json`` a job printed between the marker lines of ``--print-result``."""
    begin, end = logs.rfind(RESULT_BEGIN), logs.rfind(RESULT_END)
    if begin < 0 or end < begin:
        raise JobFailedError("the job's logs hold no result (it did not finish, or was not a bstune run)")
    return dict(json.loads(logs[begin + len(RESULT_BEGIN) : end]))


def fetch_report(job_id: str, out: str | Path, *, address: str, target: Mapping[str, Any] | None = None) -> Path:
    """Fetch a finished job's result into ``out`` (``result.json`` and the report); returns ``out``."""
    from bstune.study import StudyResult

    client = _client(address)
    state = status(job_id, address=address)
    if state != "SUCCEEDED":
        info = client.get_job_info(job_id)
        raise JobFailedError(f"job {job_id} is {state}: {info.message or 'no message'}; see `ray job logs {job_id}`")
    result = StudyResult.from_dict(result_from_logs(client.get_job_logs(job_id)))
    folder = Path(out)
    result.save(folder)
    result.report(dict(target) if target else None).save(str(folder))
    return folder
