"""Spawning the ranks of a data-parallel run: :func:`train_data_parallel` and :func:`run_data_parallel`.

What a run does on each rank is :mod:`bstune.training._distributed`; here, N processes are
started (``multiprocessing``'s *spawn* context), joined into a process group on loopback
(gloo on the CPU, NCCL with one CUDA device per rank), and watched: the callback of rank 0
runs in the launching process, a rank that raises stops the others, and none outlives
the launcher.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from multiprocessing.process import BaseProcess
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bstune._spawn import (
    pack,
    payload_file,
    remove_files,
    start_holding_sigint,
    start_method,
    take_held_sigint,
    take_payload_file,
    unpack,
    unpack_in_child,
)
from bstune.errors import ConfigError, UserCodeError
from bstune.noise import resolve_device
from bstune.task import Task
from bstune.training._config import TrainConfig
from bstune.training._loop import train
from bstune.training._result import (
    Callback,
    Decision,
    EvalRecord,
    RunStatus,
    TrainResult,
    keep_progress,
    trained_before,
)

__all__ = ["run_data_parallel", "train_data_parallel"]

logger = logging.getLogger(__name__)

_GRACE_S = 5.0  # after one rank fails, how long the others get to report before they are stopped


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _ParentCallback:
    """Rank 0's callback: sends each record to the launching process and waits for its decision."""

    def __init__(self, events: Any, decisions: Any) -> None:
        self.events, self.decisions = events, decisions

    def __call__(self, record: EvalRecord) -> Decision:
        self.events.put((0, "record", pack(record)))
        return Decision.STOP if self.decisions.get() else Decision.CONTINUE


def _watch_parent(parent: int) -> None:
    while True:  # a rank whose launcher died exits instead of waiting in a collective forever
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(0.5)


def _child(
    rank: int,
    world: int,
    port: int,
    backend: str,
    devices: list[str],
    blob_file: str,
    events: Any,
    decisions: Any,
    parent: int,
    threads: int | None,
    method: str,
) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    mp.set_start_method(method, force=True)  # the parent's (bstune._spawn.start_method): a DataLoader forks as there
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        take_held_sigint()  # a Ctrl-C that came while this rank imported is raised here, and reported
        device = torch.device(devices[rank])
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        fn, args, kwargs, wants_callback = unpack_in_child(take_payload_file(blob_file))
        if wants_callback and rank == 0:
            kwargs = dict(kwargs, callback=_ParentCallback(events, decisions))
        events.put((rank, "result", pack(fn(*args, **kwargs))))
    except BaseException as exc:  # the parent raises the first failure (its peers fail after it), with this traceback
        trained = trained_before(exc) if isinstance(exc, Exception) else (0, 0)  # global samples: any rank's
        events.put((rank, "error", (time.time(), f"{type(exc).__name__}: {exc}", traceback.format_exc(), trained)))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _default_devices(nprocs: int, devices: Sequence[str] | None, cuda: bool) -> list[str]:
    if devices is not None:
        if len(devices) != nprocs:
            raise ConfigError(f"{len(devices)} devices for {nprocs} processes", source="launcher", field="devices")
        return [str(d) for d in devices]
    return [f"cuda:{i}" for i in range(nprocs)] if cuda else ["cpu"] * nprocs


def run_data_parallel(
    fn: Callable[..., Any],
    *args: Any,
    nprocs: int,
    devices: Sequence[str] | None = None,
    backend: str | None = None,
    timeout_s: float | None = None,
    threads_per_rank: int | None = None,
    callback: Callback | None = None,
    pick: Callable[[dict[int, Any]], Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``fn(*args, **kwargs)`` on ``nprocs`` spawned processes in one process group; rank 0's return value.

    Each process joins a process group on loopback (a free port; gloo on CPU, NCCL on CUDA),
    is pinned to its device (``devices[rank]``; default ``cuda:rank`` when CUDA is available,
    else the CPU), and runs ``fn``. ``fn`` and its arguments travel by cloudpickle; return values
    by ``torch.save``.

    Args:
        fn: what each rank runs (it may call :func:`bstune.train`, which then runs data-parallel).
        nprocs: number of ranks.
        devices: one torch device per rank.
        backend: ``"gloo"`` or ``"nccl"``; default by the devices.
        timeout_s: stop every rank and raise when they have not all finished by then.
        threads_per_rank: ``torch.set_num_threads`` in each rank (default: the cores shared out).
        callback: passed to rank 0's ``fn`` as ``callback=``, as a proxy: each call sends the
            :class:`EvalRecord` here and runs ``callback`` in *this* process (so it may hold an
            unpicklable object, e.g. an Optuna trial), its decision going back to rank 0.
        pick: chooses the result from the ranks' return values (by rank); default rank 0's.

    Raises:
        UserCodeError: a rank raised (the message names the rank and the exception; ``traceback``
            holds the rank's traceback), died, or the ranks ran past ``timeout_s``. Every process
            is stopped and joined before it is raised.
    """
    if nprocs < 1:
        raise ConfigError(f"must be >= 1, got {nprocs}", source="launcher", field="nprocs")
    cuda = torch.cuda.is_available() and (devices is None or all(str(d).startswith("cuda") for d in devices))
    devs = _default_devices(nprocs, devices, cuda)
    backend = backend or ("nccl" if all(d.startswith("cuda") for d in devs) else "gloo")
    if threads_per_rank is None:
        threads_per_rank = max(1, (os.cpu_count() or 1) // nprocs)
    ctx = mp.get_context("spawn")
    events, decisions = ctx.Queue(), ctx.Queue()
    blob = pack((fn, args, kwargs, callback is not None))
    port = _free_port()
    procs: list[BaseProcess] = []
    files: list[str] = []  # the blob, a file per rank (bstune._spawn.payload_file), which the rank removes
    results: dict[int, Any] = {}
    errors: dict[int, tuple[float, str, str, tuple[int, int]]] = {}  # rank: (when, what, traceback, trained)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    grace: float | None = None  # once a rank has failed: when the others are stopped
    try:
        for r in range(nprocs):
            files.append(payload_file(blob, f"rank{r}"))
            args = (
                r,
                nprocs,
                port,
                backend,
                devs,
                files[r],
                events,
                decisions,
                os.getpid(),
                threads_per_rank,
                start_method(),
            )
            procs.append(ctx.Process(target=_child, args=args, name=f"bstune-rank{r}"))
        start_holding_sigint([p.start for p in procs])
        while len(results) + len(errors) < nprocs:
            now = time.monotonic()
            if deadline is not None and now > deadline:
                raise UserCodeError(f"the {nprocs} ranks did not finish within {timeout_s} s; stopped them")
            if grace is not None and now > grace:
                break
            try:
                rank, kind, payload = events.get(timeout=0.2)
            except queue.Empty:
                for r, p in enumerate(procs):
                    if not p.is_alive() and r not in results and r not in errors:
                        time.sleep(0.2)  # its last message may still be in the pipe
                        if events.empty():
                            errors[r] = (
                                time.time(),
                                f"exit code {p.exitcode} (the process died without a result)",
                                "",
                                (0, 0),
                            )
                            grace = grace or time.monotonic() + _GRACE_S
                continue
            if kind == "record":
                assert callback is not None
                decision = callback(unpack(payload))
                decisions.put(decision is True or decision == Decision.STOP)
            elif kind == "result":
                results[rank] = unpack(payload)
                if isinstance(results[rank], TrainResult) and results[rank].status is RunStatus.OOM:
                    grace = grace or time.monotonic() + _GRACE_S
            else:
                errors[rank] = payload
                grace = grace or time.monotonic() + _GRACE_S
    finally:
        started = [p for p in procs if p.pid is not None]
        for p in started:
            p.join(timeout=1.0 if grace is None else 0.1)
        for p in started:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)
            if p.is_alive():
                p.kill()
                p.join()
        events.close()
        decisions.close()
        remove_files(files)  # those no rank took (it died starting, or was never started)
    if pick is not None:
        chosen = pick(results)
        if chosen is not None:
            return chosen
    if errors:
        rank = min(errors, key=lambda r: errors[r][0])  # the first to fail; its peers' collectives failed after
        _, message, text, _ = errors[rank]
        others = sorted(set(errors) - {rank})
        also = f" (rank(s) {others} failed too)" if others else ""
        error = UserCodeError(f"rank {rank} of {nprocs} raised {message}{also}", traceback=text)
        keep_progress(error, *max((e[3] for e in errors.values()), default=(0, 0)))  # what the run had trained
        raise error
    return results[0]


def _train_rank(
    task: Task,
    config: TrainConfig,
    devices: list[str],
    model_kwargs: dict[str, Any],
    callback: Callback | None = None,
) -> TrainResult:
    """One rank of :func:`train_data_parallel`: train on this rank's device; the model comes back on the CPU."""
    rank = dist.get_rank()
    fresh = task.make_model(seed=config.seed, **model_kwargs)  # the same on every rank (DDP also broadcasts rank 0's)
    result = train(task, replace(config, device=devices[rank]), callback, model=fresh)
    trained = result.model.cpu() if (rank == 0 and result.model is not None) else None
    return replace(result, model=trained)


def _pick_result(results: dict[int, Any]) -> TrainResult | None:
    """An ``oom`` rank's result (its peers failed on its account), else ``None`` (rank 0's, or raise)."""
    for rank in sorted(results):
        if isinstance(results[rank], TrainResult) and results[rank].status is RunStatus.OOM:
            return results[rank]  # type: ignore[no-any-return]
    return None


def train_data_parallel(
    task: Task,
    config: TrainConfig,
    callback: Callback | None = None,
    *,
    nprocs: int,
    devices: Sequence[str] | None = None,
    backend: str | None = None,
    timeout_s: float | None = None,
    threads_per_rank: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> TrainResult:
    """:func:`bstune.train` on ``nprocs`` spawned processes, data-parallel; rank 0's result.

    ``model_kwargs`` go to the task's model factory (a search space's ``model.*`` parameters).

    ``config.batch_size`` is the global batch. ``callback`` runs in this process (rank 0 sends
    each record and waits for the decision), so a pruner's trial object need not be picklable.
    The task must pickle (by cloudpickle, which takes lambdas). The result's model is
    rank 0's, on the CPU. With ``nprocs=1`` it still runs in one spawned process.

    Example (not run here: it spawns processes)::

        result = bstune.training.train_data_parallel(task, TrainConfig(batch_size=512, lr=0.4,
                                                     max_samples=200_000), nprocs=4)

    Raises:
        ConfigError: ``batch_size`` is smaller than ``nprocs``, or ``devices`` does not match it.
        UserCodeError: a rank raised or died (see :func:`run_data_parallel`).
    """
    if config.batch_size < nprocs:
        raise ConfigError(
            f"{config.batch_size} is the global batch; it must hold at least one example for each of "
            f"the {nprocs} ranks (world size {nprocs})",
            source="TrainConfig",
            field="batch_size",
        )
    cuda = resolve_device(config.device).type == "cuda"
    devs = _default_devices(nprocs, devices, cuda)
    return run_data_parallel(  # type: ignore[no-any-return]
        _train_rank,
        task,
        config,
        devs,
        dict(model_kwargs or {}),
        nprocs=nprocs,
        devices=devs,
        backend=backend,
        timeout_s=timeout_s,
        threads_per_rank=threads_per_rank,
        callback=callback,
        pick=_pick_result,
    )
