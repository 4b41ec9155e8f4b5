"""The Ray backend on a real two-node cluster: trials on both nodes, a worker node and the driver killed.

Every study here runs through the real CLI in a subprocess (``bstune run --backend ray
--address HOST:PORT``), as a user's driver would, so it can be SIGKILLed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from bstune.study import StudyResult
from tests.ray.conftest import Cluster, read_results

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# A digits MLP whose model factory logs the trial's `tag`, node and Tune trial id each time a trial
# starts training: the log says which trials trained, where, and how often. Tag 0 is a model made
# outside a trial (the task's shape check when the script is loaded). SECONDS_PER_SAMPLE slows the model
# down, as a bigger one would be, so that a trial is still running when a node is killed.
TASK = """
import time

import torch
from sklearn.datasets import load_digits
from torch import nn
import bstune

START_LOG = {log!r}
SECONDS_PER_SAMPLE = {seconds_per_sample!r}


class Slow(nn.Module):
    def forward(self, x):
        time.sleep(SECONDS_PER_SAMPLE * len(x))
        return x


def make_task():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)

    def model(tag: int = 0) -> nn.Module:
        node = trial = "-"
        try:
            import ray
            from ray import tune
            if ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()
                trial = tune.get_context().get_trial_id() or "-"
        except Exception:
            pass
        with open(START_LOG, "a") as f:
            f.write(f"{{tag}} {{node}} {{trial}}\\n")
        return nn.Sequential(Slow(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    return bstune.Task(model=model, train_data=(x[:1400], y[:1400]), val_data=(x[1400:], y[1400:]),
                       loss=nn.CrossEntropyLoss(), optimizer=bstune.OptimizerSpec("sgd", momentum=0.9),
                       name="tagged_digits")
"""

SPACE = """
name: tagged
optimizer: {family: sgd, momentum: 0.9}
batch_size: {min: 16, max: 256}
lr: {min: 0.01, max: 1.0}
params:
  model.tag: {type: int, low: 1, high: 1000000000}
"""


def write_inputs(folder: Path, seconds_per_sample: float = 0.0) -> tuple[Path, Path, Path]:
    log = folder / "starts.log"
    script = folder / "tagged_digits.py"
    script.write_text(TASK.format(log=str(log), seconds_per_sample=seconds_per_sample))
    space = folder / "tagged.yaml"
    space.write_text(SPACE)
    return script, space, log


@dataclass
class Driver:
    """A ``bstune run`` driver process in a session of its own; its stdout and stderr go to ``log``
    (a pipe nobody reads while the test waits would fill and block it)."""

    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        """True while the driver runs; fails the test, with its output, once it has ended."""
        if self.proc.poll() is None:
            return True
        raise AssertionError(f"the driver ended (exit {self.proc.returncode}) before the test stopped it:\n"
                             f"{self.output()[-4000:]}")  # fmt: skip

    def stop(self, sig: signal.Signals) -> None:
        os.killpg(self.proc.pid, sig)  # the whole group, as a terminal's Ctrl-C, or a machine dying

    def finish(self, timeout: float) -> tuple[int, str]:
        """Its exit code and output, once it has ended."""
        self.proc.wait(timeout=timeout)
        return self.proc.returncode, self.output()


def run_cli(cluster: Cluster, script: Path, space: Path, out: Path, *extra: str) -> Driver:
    command = [sys.executable, "-m", "bstune.cli", "run", str(script), "--space", str(space), "--backend", "ray",
               "--address", cluster.gcs, "--out", str(out), "--mode", "baseline", "--no-progress", *extra]  # fmt: skip
    log = out.parent / f"driver-{len(list(out.parent.glob('driver-*.log')))}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command,
            env=cluster.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],
        )
    return Driver(proc, log)


def finished(results: dict[str, list[dict[str, object]]]) -> dict[str, dict[str, object]]:
    return {name: lines[-1] for name, lines in results.items() if lines and lines[-1].get("final")}


def read_starts(log: Path) -> list[tuple[int, str]]:
    """(tag, node) of every trial start so far, in order; tag 0 (no trial) left out."""
    if not log.exists():
        return []
    rows = [line.split() for line in log.read_text().splitlines() if line.strip()]
    return [(int(t), node) for t, node, _ in rows if t != "0"]


def tune_trial_starts(log: Path, after: int = 0) -> Counter[str]:
    """How many times each Tune trial (by id) started training after the log's first ``after`` lines;
    models made outside a Tune trial left out."""
    rows = [line.split() for line in log.read_text().splitlines()[after:] if line.strip()]
    return Counter(trial for _, _, trial in rows if trial != "-")


def log_lines(log: Path) -> int:
    return len(log.read_text().splitlines())


def tag(line: dict[str, object]) -> int:
    """The ``model.tag`` of the trial a result line belongs to (Ray keeps the trial's config in each line)."""
    return int(line["config"]["bstune_plan"]["config"]["model_kwargs"]["tag"])  # type: ignore[index]


def wait_until(predicate: object, timeout: float, what: str, driver: Driver | None = None, every: float = 1.0) -> None:
    """Poll ``predicate`` every ``every`` s; fail after ``timeout`` s, or as soon as ``driver`` has ended."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if driver is not None:
            driver.running()
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}" + (f":\n{driver.output()[-4000:]}" if driver else ""))
        time.sleep(every)


def bstune_cli(cluster: Cluster, *args: str) -> str:
    """Run ``bstune ARGS`` in a fresh process (the cluster's token is in its environment); returns stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "bstune.cli", *args], env=cluster.env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_submitted_job_runs_and_its_report_is_fetched(ray_cluster: Cluster, tmp_path: Path) -> None:
    script, space, _ = write_inputs(tmp_path)
    address = ["--address", ray_cluster.dashboard]
    job_id = bstune_cli(ray_cluster, "submit", str(script), "--space", str(space), *address, "--trials", "3",
                        "--budget-samples", "3000", "--mode", "baseline").splitlines()[-1]  # fmt: skip
    assert bstune_cli(ray_cluster, "status", job_id, *address) in {"PENDING", "RUNNING", "SUCCEEDED"}
    ended = {"SUCCEEDED", "FAILED", "STOPPED"}
    # each poll is a fresh `bstune status` process (seconds of CPU on 2 cores): every 5 s, not every second
    job_status = ("status", job_id, *address)
    wait_until(lambda: bstune_cli(ray_cluster, *job_status) in ended, 400, "the job to end", every=5.0)
    assert bstune_cli(ray_cluster, "status", job_id, *address) == "SUCCEEDED"
    bstune_cli(ray_cluster, "fetch", job_id, str(tmp_path / "fetched"), *address)
    result = StudyResult.load(tmp_path / "fetched")
    assert len(result.trials) == 3 and result.best_config["batch_size"] >= 16
    assert result.rescored and result.samples_rescore > 0  # re-scoring ran as Ray tasks on the cluster
    assert result.best_trial in {r.trial for r in result.rescored}
    assert (tmp_path / "fetched" / "report.md").is_file() and (tmp_path / "fetched" / "report.html").is_file()


def test_a_driver_without_the_clusters_token_is_told_so_and_one_with_it_gets_in(
    ray_cluster: Cluster, tmp_path: Path
) -> None:
    """The cluster uses token authentication (as ``ray start`` does where ~/.ray/auth_token exists). A
    driver holding the token in that file, with RAY_AUTH_MODE unset, got Ray's traceback; so did one
    without the token. bstune sends the file's token, and names what is missing when there is none."""
    env = {k: v for k, v in ray_cluster.env.items() if not k.startswith("RAY_AUTH")}
    address = ["--address", ray_cluster.dashboard]
    home = tmp_path / "home"
    home.mkdir()
    command = [sys.executable, "-m", "bstune.cli", "status", "raysubmit_none", *address]
    done = subprocess.run(command, env=env | {"HOME": str(home)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "asks for the cluster's authentication token" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(ray_cluster.env["RAY_AUTH_TOKEN"])
    done = subprocess.run(command, env=env | {"HOME": str(home)}, capture_output=True, text=True, timeout=300)
    assert "no job 'raysubmit_none'" in done.stderr, done.stderr  # in: the Jobs API answered the question


def test_a_trial_whose_worker_dies_each_try_fails_and_the_study_ends(ray_cluster: Cluster, tmp_path: Path) -> None:
    """Tune marks such a trial ERROR after its worker is gone, which the experiment state it saves
    never hears of (there it stays pending): that is no Ctrl-C, and the study must end, exit 0."""
    script, space, log = write_inputs(tmp_path)
    doomed = tmp_path / "doomed"
    dying = f"""
DOOMED = {str(doomed)!r}


def doomed(tag):
    \"\"\"True for the first trial to start (by its tag), in every try: the one whose worker dies.\"\"\"
    if not tag:
        return False
    mine = DOOMED + "." + str(os.getpid())
    with open(mine, "w") as f:
        f.write(str(tag))
    try:
        os.link(mine, DOOMED)  # atomic: the first trial's file becomes DOOMED, with its tag in it
    except FileExistsError:
        pass
    os.unlink(mine)  # a later trial in this process must not rewrite DOOMED through its other name
    with open(DOOMED) as f:
        return int(f.read()) == tag


class Dying(nn.Module):  # the worker process dies halfway through the trial, after its first results
    def __init__(self):
        super().__init__()
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        if self.seen > 1500:
            time.sleep(3)  # other trials finish meanwhile: each saves the experiment's state
            os._exit(1)
        return x

"""
    text = script.read_text().replace("\n\ndef make_task():", dying + "\ndef make_task():")
    text = text.replace("return nn.Sequential(Slow(),", "return nn.Sequential(Dying() if doomed(tag) else Slow(),")
    script.write_text("import os\n" + text)
    out = tmp_path / "run"
    driver = run_cli(ray_cluster, script, space, out, "--trials", "4", "--budget-samples", "3000",
                     "--max-failures", "1", "--pruner", "none", "--rescore-top", "0")  # fmt: skip
    code, output = driver.finish(timeout=600)
    assert code == 0, output
    result = StudyResult.load(out)
    died = int(doomed.read_text())
    assert Counter(t for t, _ in read_starts(log))[died] == 2  # its first try and its one retry
    statuses = {int(t.config["model_kwargs"]["tag"]): t.status for t in result.trials}
    assert len(statuses) == 4 and statuses.pop(died) == "failed", statuses
    assert set(statuses.values()) == {"completed"}, statuses


SPACE_B_LR = """
name: b_and_lr
optimizer: {family: sgd, momentum: 0.9}
batch_size: {min: 16, max: 256}
lr: {min: 0.01, max: 1.0}
"""


def test_a_study_killed_then_stopped_by_ctrl_c_resumes_each_time_and_trains_no_finished_trial_again(
    ray_cluster: Cluster, tmp_path: Path
) -> None:
    """One prior-mode study through both ways a driver stops early, resumed after each.

    - SIGKILL of the first driver (no chance to save anything on the way out): every trial
      finished by then is kept with its value.
    - Ctrl-C of the resumed driver: Tune takes the first one itself and returns as if done; the
      study went on to re-score and report, with exit 0, and recorded the cut trial as pruned. It
      stops as the embedded backend does: exit 130, bstune's resume line (not Ray's), no report of
      half a study; resumed, it reruns only the cut trials and exits 0.
    - The probe's trial-long run is the study's first trial, as on the embedded backend (Tune trains
      one trial less), kept once through both stops; its samples count once. (On Ray it used to
      stay the probe's cost: a whole trial's samples that counted for nothing.)
    """
    script, _, log = write_inputs(tmp_path, seconds_per_sample=1e-4)  # a trial takes seconds
    space = tmp_path / "b_and_lr.yaml"
    space.write_text(SPACE_B_LR)
    out = tmp_path / "run"
    experiment = out / "ray" / "bstune-tagged_digits"
    n_trials = 8  # the probe's run and 7 Tune trials
    # every trial finishes; no re-scoring, which would train finished trials' configs again
    settings = ["--mode", "prior", "--trials", str(n_trials), "--budget-samples", "9000", "--pruner", "none",
                "--rescore-top", "0"]  # fmt: skip

    def finished_ids() -> set[str]:
        return {str(line["trial_id"]) for line in finished(read_results(experiment)).values()}

    driver = run_cli(ray_cluster, script, space, out, *settings)
    wait_until(lambda: len(finished_ids()) >= 1, 600, "a finished Tune trial", driver)
    driver.stop(signal.SIGKILL)
    driver.finish(timeout=30)
    at_kill = finished(read_results(experiment))
    after_kill = log_lines(log)
    state = json.loads((experiment / "bstune_study.json").read_text())
    assert state["probe"] is not None and state["adopted"]["user_attrs"]["from_probe"] is True

    driver = run_cli(ray_cluster, script, space, out, *settings, "--resume")
    wait_until(lambda: len(finished_ids()) >= len(at_kill) + 2, 400, "two more finished trials", driver)
    driver.stop(signal.SIGINT)  # what Ctrl-C sends the terminal's foreground group
    code, output = driver.finish(timeout=120)
    assert code == 130, output
    assert "bstune: interrupted; the finished trials are kept in" in output and "--resume" in output
    assert "Tuner.restore(" not in output  # Ray's own resume line, beside bstune's
    assert not (out / "result.json").exists() and not (out / "report.md").exists()  # no report of half a study
    at_interrupt = finished(read_results(experiment))
    after_interrupt = log_lines(log)
    assert at_kill.keys() <= at_interrupt.keys()
    assert len(at_interrupt) < n_trials - 1, "the study ended before the interrupt"

    code, output = run_cli(ray_cluster, script, space, out, *settings, "--resume").finish(timeout=600)
    assert code == 0, output
    assert "Failed to fetch metrics" not in output  # a cut trial had no result yet: nothing to fetch
    result = StudyResult.load(out)
    assert [t.number for t in result.trials] == list(range(n_trials))
    assert {t.status for t in result.trials} == {"completed"}
    for name, line in at_interrupt.items():  # kept, with the value it had when its driver stopped
        record = result.trials[int(line["config"]["bstune_trial_number"])]  # type: ignore[index]
        assert record.status == line["status"] == "completed", name
        assert record.value == pytest.approx(line["objective"]), name
    # no trial that had finished trained again (a cut one did: its restart is in the log)
    for done, since in ((at_kill, after_kill), (at_interrupt, after_interrupt)):
        trained_again = {str(line["trial_id"]) for line in done.values()} & tune_trial_starts(log, since).keys()
        assert not trained_again, log.read_text()
    results = read_results(experiment)
    assert set(tune_trial_starts(log)) == {lines[-1]["trial_id"] for lines in results.values()}
    assert len(results) == n_trials - 1  # Tune trained one trial less: the probe's run is trial 0

    probe = result.probe
    assert probe is not None and probe.run is not None
    first, *rest = result.trials
    assert first.from_probe and not any(t.from_probe for t in rest)
    assert (first.status, first.batch_size, first.lr) == ("completed", probe.batch_size, pytest.approx(probe.lr_probe))
    assert first.value == pytest.approx(min(h["val_loss"] for h in probe.run["history"]))
    assert first.samples == probe.run["samples"] and first.history == probe.run["history"]
    assert result.samples_probe == probe.samples_used - first.samples  # its samples are counted once


def test_trials_run_on_both_nodes_and_a_dying_worker_node_is_survived(ray_cluster: Cluster, tmp_path: Path) -> None:
    nodes = ray_cluster.wait_for_nodes(2)
    script, space, log = write_inputs(tmp_path, seconds_per_sample=1e-4)  # a trial takes 5-10 s
    out = tmp_path / "run"
    experiment = out / "ray" / "bstune-tagged_digits"
    n_trials = 4
    budget = 30000  # no early stopping: a trial seen running goes on running until killed
    driver = run_cli(ray_cluster, script, space, out, "--trials", str(n_trials), "--budget-samples", str(budget),
                     "--max-failures", "3", "--pruner", "none", "--rescore-top", "0")  # fmt: skip

    def running_on_both() -> bool:  # a trial has started, and not finished, on each node
        done = {tag(line) for line in finished(read_results(experiment)).values()}
        return len({node for t, node in read_starts(log) if t not in done}) == 2

    wait_until(running_on_both, 400, "trials running on both nodes at once", driver)
    ray_cluster.kill_worker()
    code, output = driver.finish(timeout=600)
    assert code == 0, output
    result = StudyResult.load(out)
    assert len(result.trials) == n_trials
    assert not [t for t in result.trials if t.status == "failed"], [t.message for t in result.trials]
    assert {t.worker for t in result.trials} <= set(nodes)
    started_on: dict[int, set[str]] = {}
    for t, node in read_starts(log):
        started_on.setdefault(t, set()).add(node)
    assert set().union(*started_on.values()) == set(nodes)  # trials ran on both nodes
    assert set(started_on) == {int(t.config["model_kwargs"]["tag"]) for t in result.trials}
    moved = [t for t, where in started_on.items() if len(where) == 2]
    assert moved, f"the trial on the killed node was not retried on the other one: {started_on}"
    assert json.loads((out / "result.json").read_text())["trials"]


DDP_TASK = """
import os

import torch
from sklearn.datasets import load_digits
from torch import nn
import bstune

LOG = {log!r}


def make_task():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)

    def model() -> nn.Module:
        dist = torch.distributed
        size = dist.get_world_size() if dist.is_initialized() else 1
        with open(LOG, "a") as f:
            f.write(f"{{os.getpid()}} {{size}}\\n")
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    return bstune.Task(model=model, train_data=(x[:1400], y[:1400]), val_data=(x[1400:], y[1400:]),
                       loss=nn.CrossEntropyLoss(), name="ddp_digits")
"""


def test_a_trial_on_a_ray_worker_runs_data_parallel(ray_cluster: Cluster, tmp_path: Path) -> None:
    log = tmp_path / "built.log"
    script = tmp_path / "ddp_digits.py"
    script.write_text(DDP_TASK.format(log=str(log)))
    space = tmp_path / "space.yaml"
    space.write_text("name: ddp\nbatch_size: {min: 16, max: 128}\nlr: {min: 0.01, max: 1.0}\n")
    out = tmp_path / "out"
    # one CPU per trial reserved (these nodes have one each), the trial's 2 ranks share it
    extra = ("--trials", "2", "--budget-samples", "2000", "--pruner", "none", "--rescore-top", "0")
    driver = run_cli(ray_cluster, script, space, out, *extra, "--devices-per-trial", "2", "--resources", "cpu=1")
    code, output = driver.finish(timeout=600)
    assert code == 0, output
    result = StudyResult.load(out)
    assert [t.status for t in result.trials] == ["completed", "completed"], [t.message for t in result.trials]
    ranks = [line.split() for line in log.read_text().splitlines() if line.endswith(" 2")]
    assert len(ranks) == 4 and len({pid for pid, _ in ranks}) == 4, log.read_text()  # 2 trials x 2 ranks
