"""The Ray backend: its per-trial overhead against the embedded default, and throughput on 1 vs 2 nodes.

One study, run three ways: ``digits_mlp`` in baseline mode with the space pinned to one
(B, η), so that every trial trains exactly the same amount, and no early stopping
(``pruner="none"``), so that every trial runs its whole budget:

* ``embedded``   ``Study(...).run()`` in this process (Optuna, one torch thread);
* ``ray, 1 node``  the same study with ``backend="ray"`` on a local cluster of one node
                   with one CPU: one trial at a time, as the embedded backend runs them;
* ``ray, 2 nodes`` the same again after a second node (one CPU) joined: two trials at once.

The clusters are real Ray nodes on this machine (``ray.cluster_utils.Cluster``: one raylet
per node). Cluster start-up is timed once, apart from the studies; each study's wall time
covers ``Study.run()`` from the call to the result (Tuner set-up, scheduling, worker
start, training, results). The configurations are interleaved over ``repeats`` rounds.

Overhead per trial = (Ray 1-node wall − embedded wall) / trials. Throughput = trials per
minute of wall time. On a 2-core machine the driver shares the cores with the two trial
workers, so the 2-node speed-up is a lower bound on what two real machines would give.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import bstune
from benchmarks.problems import PROBLEMS, task_of
from bstune.study import RaySettings

log = logging.getLogger("benchmarks.ray_backend")


def _study(problem_name: str, batch: int, lr: float, n_trials: int, samples: int, **backend: Any) -> bstune.Study:
    problem = PROBLEMS[problem_name]
    space = dict(problem.space, batch_size={"min": batch, "max": batch}, lr={"min": lr, "max": lr})
    return bstune.Study(
        task_of(problem_name),
        space,
        n_trials=n_trials,
        budget_samples=samples,
        n_evals=problem.n_evals,
        mode="baseline",
        pruner="none",
        rescore_top=0,  # trials only: re-scoring is timed by nothing here
        device="cpu",
        progress=False,
        **backend,
    )


def _timed(study: bstune.Study) -> tuple[float, bstune.StudyResult]:
    t0 = time.perf_counter()
    result = study.run()
    return time.perf_counter() - t0, result


def run(
    problem_name: str = "digits_mlp",
    batch: int = 64,
    lr: float = 0.1,
    n_trials: int = 8,
    repeats: int = 3,
    samples: int | None = None,
) -> dict[str, Any]:
    """Time the study on each backend and cluster size; returns the rows ``benchmarks.report`` renders.

    ``samples``: training samples per trial (default the problem's budget); longer trials
    show how the fixed per-trial cost shrinks against the training.
    """
    samples = samples or PROBLEMS[problem_name].budget
    import ray
    from ray.cluster_utils import Cluster

    root = str(Path(__file__).resolve().parents[1])  # workers import bstune and benchmarks from the checkout
    os.environ["PYTHONPATH"] = root + os.pathsep + os.environ.get("PYTHONPATH", "")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(1)  # as a Ray worker with one CPU (Ray sets OMP_NUM_THREADS=1 there)
    storage = Path(tempfile.mkdtemp(prefix="bstune-bench-raybackend-"))
    walls: dict[str, list[float]] = {"embedded": [], "ray, 1 node": [], "ray, 2 nodes": []}
    nodes_used: dict[str, list[int]] = {"ray, 1 node": [], "ray, 2 nodes": []}
    counter = iter(range(10**6))

    def ray_study(label: str) -> None:
        study = _study(
            problem_name,
            batch,
            lr,
            n_trials,
            samples,
            backend="ray",
            ray=RaySettings(resources_per_trial={"cpu": 1}, storage_path=str(storage)),
            study_name=f"bench-{next(counter)}",
        )
        wall, result = _timed(study)
        assert len(result.trials) == n_trials and all(t.status == "completed" for t in result.trials)
        walls[label].append(wall)
        nodes_used[label].append(len({t.worker for t in result.trials}))
        log.info("%s: %.1f s for %d trials", label, wall, n_trials)

    def embedded() -> None:
        wall, result = _timed(_study(problem_name, batch, lr, n_trials, samples))
        assert len(result.trials) == n_trials
        walls["embedded"].append(wall)
        log.info("embedded: %.1f s for %d trials", wall, n_trials)

    t0 = time.perf_counter()
    # 127.0.0.2: Ray swaps 127.0.0.1 for the host's outward address; this keeps the nodes on loopback
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.2"}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
    startup = {"one node": time.perf_counter() - t0}
    try:
        embedded()  # warm-up: imports, data, the worker's first start; not counted
        ray_study("ray, 1 node")
        walls["embedded"].clear()
        walls["ray, 1 node"].clear()
        nodes_used["ray, 1 node"].clear()
        pair = [embedded, lambda: ray_study("ray, 1 node")]
        for i in range(repeats):  # alternate which goes first, so a drift in load falls on both alike
            for fn in pair if i % 2 == 0 else pair[::-1]:
                fn()
        t0 = time.perf_counter()
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        startup["second node"] = time.perf_counter() - t0
        ray_study("ray, 2 nodes")  # warm-up of the new node's workers
        walls["ray, 2 nodes"].clear()
        nodes_used["ray, 2 nodes"].clear()
        for _ in range(repeats):
            ray_study("ray, 2 nodes")
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(storage, ignore_errors=True)  # the trials' folders: only the timings are kept

    median = {k: statistics.median(v) for k, v in walls.items()}
    rows = []
    for label, values in walls.items():
        rows.append(
            {
                "config": label,
                "wall_s": values,
                "wall_s_median": median[label],
                "s_per_trial": median[label] / n_trials,
                "trials_per_min": 60 * n_trials / median[label],
                "nodes_used": nodes_used.get(label),
            }
        )
    return {
        "problem": problem_name,
        "batch_size": batch,
        "lr": lr,
        "samples": samples,
        "n_trials": n_trials,
        "repeats": repeats,
        "rows": rows,
        "overhead_s_per_trial": (median["ray, 1 node"] - median["embedded"]) / n_trials,
        "ray_vs_embedded": median["ray, 1 node"] / median["embedded"],
        "speedup_2_vs_1_node": median["ray, 1 node"] / median["ray, 2 nodes"],
        "startup_s": startup,
        "ray": ray.__version__,
    }
