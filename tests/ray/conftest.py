"""A real local Ray cluster on loopback: ``ray start --head`` plus a worker node (``ray start --address``).

Every node, the dashboard and the Jobs API use loopback addresses (``NODE_IP``,
127.0.0.1), so none of the cluster's traffic goes through the network interface (Ray's
GCS and raylets still listen on every interface, as Ray does).

Each node is a ``ray start --block`` process in its own session, so one node can be
killed (its raylet and agents with it) while the other keeps running. The cluster
is this package's own (started for its first test, stopped after its last): its ports are
free ones, its temp dir is under pytest's, and teardown kills only its processes (``ray
stop`` would kill every Ray on the host).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("ray.tune", reason="the ray extra is not installed (pip install -e '.[ray]')")

BIN = Path(sys.executable).parent
# Every node's IP. Not 127.0.0.1: Ray swaps 127.0.0.1 and localhost for the host's outward
# address (``services.resolve_ip_for_localhost``), so its processes would talk over the
# network interface. Any other address of 127.0.0.0/8 is loopback too, and Ray keeps it.
NODE_IP = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_ports() -> list[str]:
    """Free ports for a node's agents: their defaults (52365, ...) collide with any other Ray on the host."""
    flags = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
             "--runtime-env-agent-port")  # fmt: skip
    return [x for flag in flags for x in (flag, str(free_port()))]


def cluster_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # jobs run `python -m bstune.cli` on the cluster
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_health_check_period_ms"] = "1000"  # a killed node is declared dead within seconds
    env["RAY_health_check_failure_threshold"] = "3"
    env["PYTHONUNBUFFERED"] = "1"
    # The cluster's own token: ~/.ray/auth_token is shared with every other Ray on the host
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN"] = uuid.uuid4().hex
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    return env


@dataclass
class Cluster:
    gcs: str
    dashboard: str
    env: dict[str, str]
    logs: Path
    head: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(self) -> None:
        log = open(self.logs / f"worker{len(self.workers)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--address", self.gcs, "--node-ip-address", NODE_IP,
             "--num-cpus", "1", "--object-store-memory", "100000000", "--disable-usage-stats", *node_ports()],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.workers.append(proc)

    def kill_worker(self) -> None:
        """SIGKILL the last worker node: its raylet, agents and the trial processes it started."""
        proc = self.workers.pop()
        _kill_group(proc)

    def alive_nodes(self) -> list[str]:
        code = (
            f"import json, ray; ray.init(address={self.gcs!r}, logging_level='ERROR'); "
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120, check=True
        )
        return list(json.loads(out.stdout.strip().splitlines()[-1]))

    def wait_for_nodes(self, n: int, timeout: float = 120.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                nodes = self.alive_nodes()
            except subprocess.SubprocessError:
                nodes = []
            if len(nodes) == n:
                return nodes
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(nodes)} nodes alive after {timeout} s, expected {n}; logs in {self.logs}")
            time.sleep(2)


def _session_members(sid: int) -> list[int]:
    """Every process in session ``sid`` (Linux ``/proc``), the node's workers included.

    Ray puts each worker process in a process group of its own, so killing the node's
    group would leave its trial processes running; they stay in the node's session.
    """
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session
            if int(fields[3]) == sid:
                members.append(int(stat.parent.name))
    return members


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a node: every process of the session its ``ray start`` leads, as if the machine died."""
    for pid in _session_members(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="package")  # stopped after tests/ray: idle, its daemons take ~15% of a core from the rest
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("ray")
    logs = root / "logs"
    logs.mkdir()
    port, dash = free_port(), free_port()  # ephemeral ports: outside Ray's worker port range (10002-19999)
    env = cluster_env()
    env["HOME"] = str(root / "home")  # a job's output goes under ~/bstune_jobs on the cluster: not the user's home
    (root / "home").mkdir()
    temp_dir = Path("/tmp") / f"bstune-ray-{port}"  # short: Ray's socket paths must fit in 107 bytes
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", NODE_IP, "--port", str(port),
         "--num-cpus", "1", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dash),
         "--object-store-memory", "200000000", "--temp-dir", str(temp_dir),
         "--disable-usage-stats", *node_ports()],
        env=env, stdout=open(logs / "head.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115
    )  # fmt: skip
    cluster = Cluster(gcs=f"{NODE_IP}:{port}", dashboard=f"http://127.0.0.1:{dash}", env=env, logs=logs, head=head)
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update({k: env[k] for k in saved})  # for the Jobs API client in this process
    try:
        cluster.wait_for_nodes(1)
        cluster.start_worker()
        cluster.wait_for_nodes(2)
        yield cluster
    finally:
        for proc in [*cluster.workers, head]:
            _kill_group(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def read_results(experiment: Path) -> dict[str, list[dict[str, object]]]:
    """Every result line each trial of a Ray Tune experiment folder has written, by trial folder."""
    out: dict[str, list[dict[str, object]]] = {}
    for file in experiment.glob("*/result.json"):
        lines = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        out[file.parent.name] = lines
    return out
