"""GPU readiness: the CUDA path end to end, one row per check (issue 16, part 6).

Run on a machine with one or more CUDA GPUs (installs nothing)::

    bash benchmarks/gpu_check.sh                  # this script, then ``pytest -m gpu``
    python -m benchmarks.gpu_check --quick        # the checks alone, smaller everything
    python -m benchmarks.gpu_check --device cpu --quick   # dry run of the script's logic on the CPU

Checks, each independent (one that fails or raises does not stop the others), each a row
``check | result | figure | seconds`` with PASS, FAIL or SKIP and why:

1. ``environment``: torch and CUDA versions, the devices, their free memory.
2. ``amp fp16`` / ``amp bf16``: ``bstune.train`` on a synthetic classification task (made on the
   spot, on the device) with autocast (fp16 with the GradScaler; bf16) and ``track_noise=True``:
   completes, finite, final val_loss within 5% (relative) of the fp32 run, a noise trajectory.
3. ``oom train`` / ``oom study``: a real ``torch.OutOfMemoryError``. Inputs of dim 8 and a first
   layer ``Linear(8, 131072)``: at B = 2^19 its output alone is 256 GiB, more than any GPU has,
   while the dataset is 2^19 x 8 floats (16 MB). ``bstune.train`` at B = 2^19 must return status
   ``oom`` and give the memory back; then a baseline study (batch sizes 1024..2^19, its first trial
   queued at 2^19) must record an OOM trial with a ``batch_ceiling`` and keep every later trial
   at or under it. On the CPU: SKIP (the CPU does not raise ``torch.OutOfMemoryError``; it would
   try to allocate).
4. ``trial per gpu``: ``bstune.Study(..., devices="all", n_trials=2 * n_gpus)``: every trial
   finishes, and the trials' ``worker`` shows every GPU. SKIP with one GPU or none.
5. ``ddp train``: ``train_data_parallel(task, config, nprocs=n_gpus)`` with ``track_noise=True``
   against a single-device ``bstune.train`` of the same config: final val_loss within 1e-3
   (relative), a noise trajectory; samples/s of both. On the CPU: 2 gloo processes.
   ``ddp study``: a study whose trials each run data-parallel on all GPUs
   (``devices_per_trial``); SKIP where StudySettings has no such setting.
6. ``throughput fp32`` / ``throughput amp``: ``bstune.study._throughput.measure_throughput`` on an MLP
   1024-4096-4096-10 at B = 32, 128, 512, 2048, 8192 (``--quick``: up to 2048), without and with
   bf16 autocast; samples/s per B and the ratio of the last rung to the one before (near 1:
   throughput has saturated).
7. ``noise overhead``: wall time per step of ``bstune.train`` with noise tracking (every 8th step,
   the default; every step) against none, and with gradient accumulation (k = 4) against
   accumulation alone; each run timed whole between CUDA synchronisations (an MLP
   1024-4096-4096-10 at B = 512 on a GPU). A figure, not a threshold: PASS when every run completes.

Time, measured on one H200 (2026-12-04, without ``--quick``): 39 s for the checks (environment
5 s, AMP 5 s, OOM 8 s, DDP 13 s, throughput 2 s; one trial per GPU skipped with one GPU), then
about 20 s for ``pytest -m gpu``. With several GPUs, one trial per GPU and DDP start more
processes (CUDA and NCCL start for each), still well under 10 minutes. On the CPU
(``--device cpu --quick``, 2 shared cores): about 50 s.

Writes ``--out`` (default ``benchmarks/results/gpu_check.md``): the table, the machine, the
date, the git revision and the command. Exits 1 if any check FAILed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import gc
import itertools
import math
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _provenance import cpu_model, git, loadavg  # noqa: E402

AMP_TOLERANCE = 0.05  # relative, final val_loss of an AMP run against fp32
DDP_TOLERANCE = 1e-3  # relative, final val_loss of DDP against one device (NCCL sums in another order)
OOM_WIDTH = 131072  # the first layer's width in the OOM task: B * 131072 * 4 bytes of activations
OOM_BATCH = 2**19  # 256 GiB of first-layer output alone
OOM_RELEASED_BYTES = 64 * 2**20  # memory_allocated after the OOM, over before: "back near 0"


@dataclasses.dataclass
class Row:
    """One line of the table."""

    check: str
    result: str  # PASS, FAIL or SKIP
    figure: str  # what was measured, or why it failed / was skipped
    seconds: float = 0.0


@dataclasses.dataclass
class Options:
    """What the checks run on and how big."""

    device: str  # "cuda" or "cpu"
    quick: bool
    workdir: Path

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


# ---------------------------------------------------------------------------------------------
# tasks (module level, so that spawned trial workers and DDP ranks can unpickle them)


def mlp(*widths: int) -> Any:
    """An MLP with ReLU between the layers of the given widths."""
    import torch

    layers: list[Any] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        if i:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(a, b))
    return torch.nn.Sequential(*layers)


def synthetic_task(n: int, inputs: int, classes: int, width: int, device: str, seed: int = 0) -> Any:
    """A classification task labelled by a random teacher MLP; the data are made on ``device``
    (so the device's generator and kernels are exercised), then kept on the CPU as datasets are."""
    import torch

    import bstune

    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n + 1024, inputs, generator=gen, device=device)
    teacher = torch.randn(inputs, classes, generator=gen, device=device)
    y = (x @ teacher + 0.5 * torch.randn(n + 1024, classes, generator=gen, device=device)).argmax(dim=1)
    x, y = x.cpu(), y.cpu()
    return bstune.Task(
        model=functools.partial(mlp, inputs, width, width, classes),
        train_data=(x[:n], y[:n]),
        val_data=(x[n:], y[n:]),
        loss=torch.nn.CrossEntropyLoss(),
        name="gpu_check",
    )


def oom_task(n: int) -> Any:
    """Inputs of dim 8 and a first layer 8 -> 131072: small data, activations of B * 512 KiB."""
    import torch

    import bstune

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=gen)
    y = (x[:, 0] > 0).long()
    return bstune.Task(
        model=functools.partial(mlp, 8, OOM_WIDTH, 2),
        train_data=(x, y),
        val_data=(x[:1024], y[:1024]),
        loss=torch.nn.CrossEntropyLoss(),
        name="gpu_check_oom",
    )


# ---------------------------------------------------------------------------------------------
# helpers


def _final_val(result: Any) -> float:
    return float(result.final.val_loss) if result.final is not None else math.nan


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "oom"
    if not math.isfinite(rate):
        return "nan"
    return f"{rate / 1e3:.1f}k" if rate >= 1e3 else f"{rate:.0f}"


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _settings_has(name: str) -> bool:
    from bstune.study import StudySettings

    return name in {f.name for f in dataclasses.fields(StudySettings)}


def _study_settings(**extra: Any) -> dict[str, Any]:
    """A small, quiet baseline study: no pruner, no re-scoring, no progress bars."""
    return {"mode": "baseline", "pruner": "none", "rescore_top": 0, "progress": False, "n_evals": 2} | extra


# ---------------------------------------------------------------------------------------------
# the checks: each returns its rows; an exception becomes a FAIL row of its own


def check_environment(opt: Options) -> list[Row]:
    import torch

    parts = [f"torch {torch.__version__}", f"CUDA {torch.version.cuda or 'none'}"]
    if not opt.cuda:
        parts.append(f"dry run on the CPU ({os.cpu_count()} cores; cuda available: {torch.cuda.is_available()})")
        return [Row("environment", "PASS", ", ".join(parts))]
    if not torch.cuda.is_available():
        return [Row("environment", "FAIL", ", ".join(parts) + "; torch.cuda.is_available() is False")]
    parts.append(f"{torch.cuda.device_count()} GPU(s)")
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        parts.append(f"cuda:{i} {torch.cuda.get_device_name(i)} {free / 2**30:.0f}/{total / 2**30:.0f} GiB free")
    return [Row("environment", "PASS", ", ".join(parts))]


def _amp_config(opt: Options, **changes: Any) -> Any:
    import bstune

    n = 4096 if opt.quick else 16384
    return bstune.TrainConfig(
        batch_size=128, lr=0.2, max_samples=4 * n, eval_every_samples=n, eval_train_examples=1024,
        seed=0, device=opt.device, track_noise=True, **changes,
    )  # fmt: skip


def check_amp(opt: Options) -> list[Row]:
    import bstune

    n = 4096 if opt.quick else 16384
    task = synthetic_task(n, inputs=64, classes=10, width=256, device=opt.device)
    t0 = time.perf_counter()
    base = bstune.train(task, _amp_config(opt))
    base_s = time.perf_counter() - t0
    ref = _final_val(base)
    if base.status.value != "completed" or not math.isfinite(ref):
        return [Row("amp", "FAIL", f"the fp32 reference run ended {base.status.value}: {base.message}", base_s)]
    rows = []
    for dtype in ("float16", "bfloat16"):
        name = "amp fp16" if dtype == "float16" else "amp bf16"
        if dtype == "float16" and not opt.cuda:
            rows.append(Row(name, "SKIP", "fp16 autocast with the GradScaler is the CUDA path; the CPU runs bf16"))
            continue
        rows.append(_one_amp(name, task, opt, dtype, ref))
    ran = [r for r in rows if r.result != "SKIP"]
    if ran:
        ran[0].seconds += base_s  # the fp32 reference run, with the first run compared to it
    return rows


def _one_amp(name: str, task: Any, opt: Options, dtype: str, ref: float) -> Row:
    import bstune

    t0 = time.perf_counter()
    try:
        res = bstune.train(task, _amp_config(opt, amp=True, amp_dtype=dtype))
    except Exception as exc:  # a row, not a crash: the other precision still runs
        return Row(name, "FAIL", f"raised {type(exc).__name__}: {exc}", time.perf_counter() - t0)
    secs = time.perf_counter() - t0
    val = _final_val(res)
    points = res.noise_trajectory
    finite_noise = all(math.isfinite(p.b_simple) for p in points)
    figure = (
        f"val_loss {val:.4f} vs fp32 {ref:.4f} ({_rel(val, ref):.1%}; tol {AMP_TOLERANCE:.0%}), "
        f"{len(points)} noise points, {_fmt_rate(res.throughput)} samples/s"
    )
    if res.status.value != "completed":
        return Row(name, "FAIL", f"ended {res.status.value}: {res.message}", secs)
    ok = math.isfinite(val) and _rel(val, ref) <= AMP_TOLERANCE and bool(points) and finite_noise
    return Row(name, "PASS" if ok else "FAIL", figure, secs)


def check_oom(opt: Options) -> list[Row]:
    if not opt.cuda:
        reason = "the CPU does not raise torch.OutOfMemoryError (it would try to allocate 256 GiB)"
        return [Row("oom train", "SKIP", reason), Row("oom study", "SKIP", reason)]
    return [_oom_train(), _oom_study(opt, oom_task(OOM_BATCH), OOM_BATCH)]


def _oom_train() -> Row:
    import torch

    import bstune

    t0 = time.perf_counter()
    task = oom_task(OOM_BATCH)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    cfg = bstune.TrainConfig(batch_size=OOM_BATCH, lr=0.01, max_samples=2 * OOM_BATCH, device="cuda", seed=0)
    try:
        res = bstune.train(task, cfg)
    except torch.OutOfMemoryError as exc:
        return Row("oom train", "FAIL", f"bstune.train raised instead of returning status oom: {exc}"[:300])
    status, message = res.status.value, res.message
    del res
    gc.collect()
    torch.cuda.synchronize()
    after = torch.cuda.memory_allocated()
    secs = time.perf_counter() - t0
    figure = f"status {status}; allocated {before / 2**20:.0f} MiB before, {after / 2**20:.0f} MiB after"
    if status != "oom":
        return Row("oom train", "FAIL", f"{figure}: expected oom ({message})", secs)
    if after - before > OOM_RELEASED_BYTES:
        return Row("oom train", "FAIL", f"{figure}: memory not released", secs)
    return Row("oom train", "PASS", figure, secs)


def _oom_study(opt: Options, task: Any, batch_max: int) -> Row:
    """A baseline study over batch sizes 1024..``batch_max`` whose first trial is queued at
    ``batch_max`` (the second at 1024), which must run out of memory on ``opt.device``: the OOM
    trial's ceiling, and every later trial at or under it. (The tests hand it a model that raises the error itself.)"""
    import optuna

    import bstune
    from bstune.study._storage import open_storage

    t0 = time.perf_counter()
    url = f"sqlite:///{opt.workdir / 'oom_study.db'}"
    name = "gpu-check-oom"
    # the first trial queued at batch_max, so that the study meets the OOM whatever its sampler
    # draws, and the second at the smallest batch, so that one trial completes (a study none of
    # whose trials completes raises) even when the sampler's later draws run out of memory too
    queued = optuna.create_study(storage=open_storage(url), study_name=name, direction="minimize")
    queued.enqueue_trial({"batch_size": batch_max, "lr": 0.01})
    queued.enqueue_trial({"batch_size": 1024, "lr": 0.01})
    n_trials = 4 if opt.quick else 6
    study = bstune.Study(
        task,
        {"name": "oom", "batch_size": {"min": 1024, "max": batch_max}, "lr": {"min": 1e-3, "max": 0.1}},
        storage=url,
        study_name=name,
        device=opt.device,
        n_trials=n_trials,
        budget_samples=batch_max + 1,  # (n_evals - 1) * B_max + 1
        **_study_settings(),
    )
    result = study.run()
    secs = time.perf_counter() - t0
    ooms = [t for t in result.trials if t.status.value == "oom"]
    if not ooms:
        sizes = [t.batch_size for t in result.trials]
        return Row("oom study", "FAIL", f"no trial ran out of memory (batch sizes {sizes})", secs)
    first = min(ooms, key=lambda t: t.number)
    # each trial at or under the lowest ceiling that the OOM trials before it learned
    cap: int | None = None
    over: list[int | None] = []
    for t in sorted(result.trials, key=lambda t: t.number):
        if cap is not None and (t.batch_size is None or t.batch_size > cap):
            over.append(t.batch_size)
        if t.status.value == "oom":
            cap = t.batch_ceiling if cap is None or t.batch_ceiling is None else min(cap, t.batch_ceiling)
    later = [t for t in result.trials if t.number > first.number]
    figure = (
        f"trial {first.number} oom at B={first.batch_size}, ceiling {first.batch_ceiling}; later B: "
        f"{[t.batch_size for t in later]} ({[t.status.value for t in later]})"
    )
    ok = first.batch_ceiling is not None and cap is not None and not over and len(result.trials) == n_trials
    return Row("oom study", "PASS" if ok else "FAIL", figure + ("" if ok else f"; over the ceiling: {over}"), secs)


def check_trial_per_gpu(opt: Options) -> list[Row]:
    import bstune

    ngpu = _gpus() if opt.cuda else 0
    if ngpu < 2:
        why = "dry run on the CPU" if not opt.cuda else f"{ngpu} GPU"
        return [Row("trial per gpu", "SKIP", f"needs 2 or more GPUs ({why})")]
    t0 = time.perf_counter()
    n = 4096
    study = bstune.Study(
        synthetic_task(n, inputs=64, classes=10, width=256, device="cuda"),
        {"name": "per_gpu", "batch_size": {"min": 64, "max": 128}, "lr": {"min": 0.01, "max": 0.1}},
        storage=f"sqlite:///{opt.workdir / 'per_gpu.db'}",
        devices="all",
        n_trials=2 * ngpu,
        # 2048-4096 steps, some seconds a trial: longer than the workers' CUDA starts differ, so
        # that no worker finds the trials all taken by the others when it comes up
        budget_samples=64 * n,
        **_study_settings(),
    )
    result = study.run()
    secs = time.perf_counter() - t0
    workers = [t.worker or "" for t in result.trials]
    used = {i for i in range(ngpu) if any(f"cuda:{i})" in w or w.endswith(f"cuda:{i}") for w in workers)}
    done = [t for t in result.trials if t.status.value in ("completed", "pruned")]
    figure = f"{len(done)}/{2 * ngpu} trials finished on {len(used)}/{ngpu} GPUs: {sorted(set(workers))}"
    ok = len(done) == 2 * ngpu and len(used) == ngpu
    if len(done) == 2 * ngpu and not ok:
        figure += " (a worker whose CUDA start took longer than the other workers' trials finds none left)"
    return [Row("trial per gpu", "PASS" if ok else "FAIL", figure, secs)]


def _ddp_config(opt: Options, nprocs: int) -> Any:
    import bstune

    n = 4096 if opt.quick else 16384
    return bstune.TrainConfig(
        batch_size=64 * nprocs, lr=0.1, max_samples=2 * n, eval_every_samples=n, eval_train_examples=1024,
        seed=0, device=opt.device, track_noise=True,
    )  # fmt: skip


def check_ddp(opt: Options) -> list[Row]:
    return [_ddp_train(opt), _ddp_study(opt)]


def _ddp_train(opt: Options) -> Row:
    import bstune
    from bstune.training import train_data_parallel

    nprocs = _gpus() if opt.cuda else 2
    if nprocs < 1:
        return Row("ddp train", "FAIL", "no CUDA device")
    n = 4096 if opt.quick else 16384
    task = synthetic_task(n, inputs=64, classes=10, width=256, device=opt.device)
    cfg = _ddp_config(opt, nprocs)
    t0 = time.perf_counter()
    single = bstune.train(task, cfg)
    ddp = train_data_parallel(task, cfg, nprocs=nprocs, threads_per_rank=1 if not opt.cuda else None)
    secs = time.perf_counter() - t0
    a, b = _final_val(ddp), _final_val(single)
    figure = (
        f"{nprocs} ranks ({'nccl' if opt.cuda else 'gloo'}), B={cfg.batch_size}: val_loss {a:.5f} vs one device "
        f"{b:.5f} (rel {_rel(a, b):.1e}; tol {DDP_TOLERANCE:.0e}), {len(ddp.noise_trajectory)} noise points; "
        f"samples/s {_fmt_rate(ddp.throughput)} ddp, {_fmt_rate(single.throughput)} one device"
    )
    if ddp.status.value != "completed" or single.status.value != "completed":
        return Row("ddp train", "FAIL", f"ended {ddp.status.value} / {single.status.value}: {ddp.message}", secs)
    ok = math.isfinite(a) and _rel(a, b) <= DDP_TOLERANCE and bool(ddp.noise_trajectory)
    return Row("ddp train", "PASS" if ok else "FAIL", figure, secs)


def _ddp_study(opt: Options) -> Row:
    import bstune
    from bstune.errors import ConfigError

    if not _settings_has("devices_per_trial"):
        return Row("ddp study", "SKIP", "StudySettings has no devices_per_trial in this bstune (not merged yet)")
    nprocs = _gpus() if opt.cuda else 2
    where: dict[str, Any] = {"devices": "all"} if opt.cuda else {"device": "cpu"}
    t0 = time.perf_counter()
    n = 4096
    try:
        study = bstune.Study(
            synthetic_task(n, inputs=64, classes=10, width=256, device=opt.device),
            {"name": "ddp", "batch_size": {"min": 64 * nprocs, "max": 256 * nprocs}, "lr": {"min": 0.01, "max": 0.1}},
            storage=f"sqlite:///{opt.workdir / 'ddp_study.db'}",
            devices_per_trial=nprocs,
            n_trials=2,
            budget_samples=2 * n,
            **where,
            **_study_settings(),
        )
    except ConfigError as exc:
        return Row("ddp study", "SKIP", f"devices_per_trial={nprocs} refused: {exc}"[:300], time.perf_counter() - t0)
    result = study.run()
    secs = time.perf_counter() - t0
    done = [t for t in result.trials if t.status.value in ("completed", "pruned")]
    figure = f"{len(done)}/2 trials on {nprocs} devices each: {[t.status.value for t in result.trials]}"
    return Row("ddp study", "PASS" if len(done) == 2 else "FAIL", figure, secs)


def check_throughput(opt: Options) -> list[Row]:
    import torch

    from bstune.study._throughput import measure_throughput

    if opt.cuda:
        inputs, width, top = 1024, 4096, (2048 if opt.quick else 8192)
    else:
        inputs, width, top = 64, 256, (512 if opt.quick else 2048)
    sizes = [b for b in (32, 128, 512, 2048, 8192) if b <= top]
    steps = 5 if opt.quick else 10
    task = synthetic_task(top, inputs=inputs, classes=10, width=width, device=opt.device)
    device = torch.device(opt.device)
    rows = []
    for name, amp in (("throughput fp32", False), ("throughput amp", True)):
        t0 = time.perf_counter()
        rates: list[float | None] = []
        for b in sizes:
            ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
            with ctx:
                rate, _, _ = measure_throughput(task, b, steps, lr=0.01, seed=0, device=device, warmup=2)
            rates.append(rate)
        secs = time.perf_counter() - t0
        ladder = ", ".join(f"{b}: {_fmt_rate(r)}" for b, r in zip(sizes, rates, strict=True))
        last, prev = rates[-1], rates[-2]
        sat = f"last/prev {last / prev:.2f}" if last and prev else "last/prev n/a"
        label = " (bf16 autocast)" if amp else ""
        ok = all(r is not None and math.isfinite(r) and r > 0 for r in rates)
        rows.append(Row(name, "PASS" if ok else "FAIL", f"samples/s{label} {ladder}; {sat}", secs))
    return rows


NOISE_CONFIGS: dict[str, dict[str, Any]] = {
    "bare": {},
    "noise": {"track_noise": True},  # the default: per-example norms from hooks on every 8th step
    "noise every step": {"track_noise": True, "noise_every_steps": 1},
    "accum k=4": {"micro_batch_size": 4},  # examples per micro-batch: set from the batch below
    "accum k=4 + noise": {"micro_batch_size": 4, "track_noise": True},
}


def check_noise_overhead(opt: Options) -> list[Row]:
    """Wall time per optimizer step of ``bstune.train`` with and without noise tracking, on the device.

    The trainer's own ``train_time_s`` does not wait for the GPU (losses are read in batches), so each
    run is timed whole, from a synchronised start to a synchronised end, with one evaluation at the
    end; warmed up once, then ``repeats`` rounds in a shuffled order, the median per configuration.
    """
    import random

    import torch

    import bstune

    if opt.cuda:
        inputs, width, batch, steps = 1024, 4096, 512, (100 if opt.quick else 400)
    else:
        inputs, width, batch, steps = 64, 256, 128, (30 if opt.quick else 100)
    repeats = 2 if opt.quick else 3
    task = synthetic_task(batch * steps, inputs=inputs, classes=10, width=width, device=opt.device)

    def timed(extra: dict[str, Any]) -> float:
        extra = {k: (batch // 4 if k == "micro_batch_size" else v) for k, v in extra.items()}
        cfg = bstune.TrainConfig(
            batch_size=batch, lr=0.05, max_samples=batch * steps, eval_every_samples=batch * steps,
            eval_train_examples=256, seed=0, device=opt.device, **extra,
        )  # fmt: skip
        if opt.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = bstune.train(task, cfg)
        if opt.cuda:
            torch.cuda.synchronize()
        if result.status.value != "completed":
            raise RuntimeError(f"{extra}: the run ended {result.status.value}: {result.message}")
        return (time.perf_counter() - t0) / max(result.steps, 1)

    t0 = time.perf_counter()
    for extra in NOISE_CONFIGS.values():  # warm-up: kernels, allocator, hooks
        timed(extra)
    times: dict[str, list[float]] = {name: [] for name in NOISE_CONFIGS}
    order = list(NOISE_CONFIGS)
    for r in range(repeats):
        random.Random(r).shuffle(order)
        for name in order:
            times[name].append(timed(NOISE_CONFIGS[name]))
    ms = {name: 1e3 * sorted(v)[len(v) // 2] for name, v in times.items()}

    def over(name: str, ref: str) -> str:
        return f"{100 * (ms[name] / ms[ref] - 1):+.0f}%"

    figure = (
        f"ms/step at B={batch} (MLP {inputs}-{width}-{width}-10, {steps} steps, median of {repeats}): "
        f"bare {ms['bare']:.3g}; noise every 8th step {ms['noise']:.3g} ({over('noise', 'bare')}); every step "
        f"{ms['noise every step']:.3g} ({over('noise every step', 'bare')}); accumulation k=4 {ms['accum k=4']:.3g}, "
        f"with noise {ms['accum k=4 + noise']:.3g} ({over('accum k=4 + noise', 'accum k=4')} over accumulation)"
    )
    return [Row("noise overhead", "PASS", figure, time.perf_counter() - t0)]


CHECKS: dict[str, Callable[[Options], list[Row]]] = {
    "environment": check_environment,
    "amp": check_amp,
    "oom": check_oom,
    "trial per gpu": check_trial_per_gpu,
    "ddp": check_ddp,
    "throughput": check_throughput,
    "noise": check_noise_overhead,
}
ROW_NAMES = (
    "environment", "amp fp16", "amp bf16", "oom train", "oom study", "trial per gpu", "ddp train", "ddp study",
    "throughput fp32", "throughput amp", "noise overhead",
)  # fmt: skip


def run_check(name: str, check: Callable[[Options], list[Row]], opt: Options) -> list[Row]:
    """One check's rows; an exception is a FAIL row carrying its type, message and last frame."""
    t0 = time.perf_counter()
    try:
        rows = check(opt)
    except Exception as exc:  # every check independent
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        rows = [Row(name, "FAIL", f"raised {type(exc).__name__} at {where}: {exc}"[:400])]
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            _free_cuda()
    if len(rows) == 1 and rows[0].seconds == 0.0:
        rows[0].seconds = time.perf_counter() - t0
    return rows


def _free_cuda() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def table(rows: list[Row]) -> str:
    """The rows as a markdown table."""
    lines = ["| check | result | figure | seconds |", "|---|---|---|---:|"]
    for r in rows:
        lines.append(f"| {r.check} | {r.result} | {r.figure.replace('|', '/')} | {r.seconds:.1f} |")
    return "\n".join(lines)


def _machine(opt: Options) -> str:
    import torch

    parts = [cpu_model(), f"{os.cpu_count()} logical cores", f"Python {platform.python_version()}"]
    parts.append(f"torch {torch.__version__}")
    if opt.cuda and torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        parts.append(f"{len(names)} x {', '.join(sorted(set(names)))}, CUDA {torch.version.cuda}")
    return ", ".join(parts)


def markdown(rows: list[Row], opt: Options, command: str, started: float, load_before: Any) -> str:
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = "GPU readiness" + (" (dry run on the CPU)" if not opt.cuda else "")
    return (
        f"# {title}\n\n{table(rows)}\n\n"
        f"*{date}; {_machine(opt)}; load {load_before} before, {loadavg()} after; "
        f"git {git('rev-parse', '--short=10', 'HEAD')}"
        f"{' (bstune modified)' if git('status', '--porcelain', '--', 'bstune') else ''}; "
        f"`{command}`; {time.time() - started:.0f} s wall.*\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller tasks, fewer trials and rungs")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run of the logic")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.md")
    parser.add_argument("--only", default=None, help="comma-separated checks: " + ", ".join(CHECKS))
    args = parser.parse_args(argv)
    only = [c.strip() for c in args.only.split(",")] if args.only else list(CHECKS)
    unknown = [c for c in only if c not in CHECKS]
    if unknown:
        parser.error(f"--only: unknown check(s) {unknown}; choose from {list(CHECKS)}")
    sys.path.insert(0, str(ROOT))
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started, load_before = time.time(), loadavg()
    command = shlex.join(["python", "-m", "benchmarks.gpu_check", *(argv if argv is not None else sys.argv[1:])])
    rows: list[Row] = []
    with _workdir() as work:
        opt = Options(device=args.device, quick=args.quick, workdir=work)
        for name in only:
            for row in run_check(name, CHECKS[name], opt):
                rows.append(row)
                print(f"{row.check:<16} {row.result:<4} {row.seconds:6.1f}s  {row.figure}", flush=True)
    text = markdown(rows, opt, command, started, load_before)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print("\n" + text)
    print(f"written to {args.out}")
    return 1 if any(r.result == "FAIL" for r in rows) else 0


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bstune-gpu-check-") as d:
        yield Path(d)


if __name__ == "__main__":
    raise SystemExit(main())
