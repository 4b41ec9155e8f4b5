"""Several trials at once on the embedded backend: one worker process per device.

With ``parallel_trials=K > 1`` (or ``devices=[...]``) :class:`~bstune.study.OptunaBackend`
starts K worker processes (``multiprocessing``'s *spawn* context: forking a process that
holds torch's threads is unsafe). Each opens the study's storage itself and runs trials,
pinned to its device (:func:`worker_devices`), until ``n_trials`` have finished across
all of them; the parent waits, then reads every trial from the storage. What several
processes on one storage already share is shared here the same way: the pruner reads the
other trials' milestones from the storage, out-of-memory ceilings travel as FAIL trials'
``batch_ceiling``, and a trial whose process died is taken over (marked ``interrupted``
and run again) by :mod:`bstune.study._liveness`.

Exactly ``n_trials`` finish: a worker takes a trial only under a lock shared by the
workers, when the trials finished plus those running are fewer than ``n_trials``, and the
trial is in the storage as running before the lock is let go.

Each worker draws with its own sampler: the study's default TPE seeded ``seed + i`` for
worker ``i``, with Optuna's *constant liar* (a running trial counts as a bad one, so
workers do not draw next to each other's running trials); a sampler given by the user is
copied into each worker and re-seeded from the OS (Optuna's ``reseed_rng``), as Optuna
does for its own parallel workers. Which configs are drawn depends on the order in which
trials finish across the workers, so a parallel study is not reproducible trial for trial;
each trial's training is (a config trains the same at the same seed on the same device).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

import optuna
import torch

from bstune._progress import progress_bar
from bstune._spawn import (
    pack,
    payload_file,
    remove_files,
    start_holding_sigint,
    start_method,
    take_held_sigint,
    take_payload_file,
    unpack_in_child,
)
from bstune.errors import BstuneError, ConfigError
from bstune.noise import resolve_device
from bstune.study._liveness import count_finished, finished_trials, retry_abandoned
from bstune.study._records import trial_line
from bstune.study._settings import StudySettings
from bstune.study._storage import storage_error, storage_failure

__all__ = [
    "DroppedInterrupts",
    "TrialGate",
    "WorkerCrashError",
    "pickled",
    "run_workers",
    "setup_process",
    "worker_devices",
    "worker_threads",
]

logger = logging.getLogger(__name__)
trial_lines = logging.getLogger("bstune.trials")  # a line per finished trial (bstune run off a terminal)

_STOP_WAIT_S = 30.0  # after Ctrl-C: how long a worker may take to mark its trial interrupted before it is killed
_OWN_STOP_S = 3.0  # after Ctrl-C: how long the workers are given to stop on their own SIGINT before one is sent
_INTERRUPTED = 130  # a worker's exit code after Ctrl-C (128 + SIGINT, as a shell says it)
_STORAGE_FAILED = 3  # a worker's exit code when the study's storage failed (its reason on the failures queue)
_REINTERRUPT_S = 5.0  # a worker still running this long after an interrupt is interrupted again


class WorkerCrashError(BstuneError):
    """A trial worker process died (not a trial that failed: the process itself), and the study could not finish."""


def worker_devices(settings: StudySettings) -> list[tuple[str, ...]]:
    """The devices each trial worker trains on, one tuple per worker.

    ``devices_per_trial`` devices each (a data-parallel trial when more than one):
    ``devices`` dealt out in consecutive groups, or without ``devices``, ``device`` for
    each of ``parallel_trials`` workers; a data-parallel trial on CUDA without a list takes
    consecutive GPUs from ``cuda:0``, one group per worker, and on the CPU that many
    processes.

    Example:
        >>> worker_devices(StudySettings(parallel_trials=2, device="cpu"))
        [('cpu',), ('cpu',)]
        >>> worker_devices(StudySettings(devices=["cpu"], device="cpu", devices_per_trial=2, parallel_trials=1))
        Traceback (most recent call last):
        ...
        bstune.errors.ConfigError: Study: devices_per_trial: the 1 devices (cpu) do not split into trials of 2; list a multiple of 2 devices
        >>> worker_devices(StudySettings(device="cpu", devices_per_trial=2))
        [('cpu', 'cpu')]

    Raises:
        ConfigError: a data-parallel trial on one named GPU (``device="cuda:1"``), or on more
            GPUs than the machine has.
    """
    k = settings.devices_per_trial
    if settings.devices is not None:
        return [tuple(settings.devices[i : i + k]) for i in range(0, len(settings.devices), k)]
    if k == 1:
        return [(settings.device,)] * settings.workers
    dev = resolve_device(settings.device, check_available=False)  # the count is checked below
    if dev.type == "cpu":
        return [("cpu",) * k] * settings.workers
    if dev.index is not None:
        raise ConfigError(
            f"a trial on {k} devices cannot run on {dev} alone; list them: devices=[...]",
            source="Study",
            field="devices_per_trial",
        )
    needed = k * settings.workers
    count = torch.cuda.device_count() if dev.type == "cuda" else 0
    if count < needed:
        raise ConfigError(
            f"{settings.workers} trial(s) at once on {k} {dev.type} devices each need {needed}; "
            f"this machine has {count}",
            source="Study",
            field="devices_per_trial",
        )
    names = [f"{dev.type}:{i}" for i in range(needed)]
    return [tuple(names[i : i + k]) for i in range(0, needed, k)]


def worker_threads(n_workers: int) -> int:
    """torch threads of each of ``n_workers`` processes sharing this machine's cores: its share, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // n_workers)


def pickled(obj: Any, *, field: str = "parallel_trials") -> bytes:
    """``obj`` as bytes a spawned worker can load: by value for what a loaded script defines.

    cloudpickle ships lambdas and a script's functions too; not open files, locks or generators.
    """
    try:
        return pack(obj)
    except Exception as exc:
        raise ConfigError(
            f"the task or training function cannot be sent to trial worker processes ({type(exc).__name__}: "
            f"{exc}); what it holds must pickle: build open files, locks, generators and the like inside the "
            "function rather than holding them",
            source="Study",
            field=field,
        ) from exc


# -- the worker process ----------------------------------------------------------------
class TrialGate:
    """The lock under which a worker counts the trials and takes one, and which worker holds it.

    A worker killed while it holds the gate would leave the others waiting for ever: the
    parent frees the gate of a worker that died (:meth:`free_for`), and a worker that waits
    longer than ``patience`` seconds goes on without it (logged; at worst one trial too many).
    """

    def __init__(self, ctx: Any, patience: float = 120.0) -> None:
        self._lock = ctx.Lock()
        self._holder = ctx.Value("i", -1, lock=False)
        self._patience = patience

    def take(self, worker: int) -> bool:
        """Wait for the gate; False when ``patience`` ran out (then the caller goes on without it)."""
        if not self._lock.acquire(timeout=self._patience):
            logger.warning("worker %d waited %.0f s to take a trial; going on", worker, self._patience)
            return False
        self._holder.value = worker
        return True

    def let_go(self) -> None:
        self._holder.value = -1
        self._lock.release()

    def free_for(self, worker: int) -> None:
        """Worker ``worker`` died: release the gate if it held it."""
        if self._holder.value == worker:
            self.let_go()


@dataclass(frozen=True)
class _WorkerArgs:
    index: int
    devices: tuple[str, ...]
    threads: int
    # the pickled (spec, planner, storage URL) in a file (bstune._spawn.payload_file: a task's data may be MBs),
    # which the worker removes as it reads it: one still there after the worker died never ran bstune's code
    payload_file: str
    gate: TrialGate  # shared by the workers: counting the trials and taking one
    failures: Any  # a SimpleQueue: why the storage failed, from a worker that exits _STORAGE_FAILED
    parent: int  # the parent's pid: a worker whose parent is gone stops between trials
    log_level: int
    work: Callable[..., None]  # the trial loop: OptunaBackend.work on a backend opened on the URL
    start_method: str  # the parent's multiprocessing start method (setup_process)


_interrupted_at: list[float] = []  # in a worker: when the first SIGINT came


def _on_sigint(signum: int, frame: Any) -> None:
    """SIGINT ends the trial as Ctrl-C does in-process (a KeyboardInterrupt); the time is kept for the watch."""
    if not _interrupted_at:
        _interrupted_at.append(time.monotonic())
    raise KeyboardInterrupt


class DroppedInterrupts:
    """Ctrl-Cs that Python dropped, kept to be raised again, and not printed as a traceback.

    A ``KeyboardInterrupt`` raised while a garbage-collection callback runs (SQLAlchemy's
    weak references, for one) cannot leave the callback: Python passes it to
    ``sys.unraisablehook``, which prints "Exception ignored in ..." with a traceback, and
    the interrupt is lost. Inside ``with DroppedInterrupts() as dropped:`` such an
    interrupt is counted instead; :meth:`raise_again` raises it where it can be handled.
    Other unraisable exceptions go to the hook that was there before.

    Example:
        >>> import weakref
        >>> class Thing: ...
        >>> def callback(ref):
        ...     raise KeyboardInterrupt  # as Ctrl-C would, arriving while the callback runs
        >>> with DroppedInterrupts() as dropped:
        ...     thing = Thing()
        ...     ref = weakref.ref(thing, callback)
        ...     del thing  # the callback runs here; nothing is printed
        ...     dropped.count
        1
        >>> try:
        ...     dropped.raise_again()  # where the interrupt can be handled
        ... except KeyboardInterrupt:
        ...     print("interrupted")
        interrupted
    """

    def __init__(self) -> None:
        self.count = 0
        self._before: Callable[[Any], Any] | None = None

    def __enter__(self) -> DroppedInterrupts:
        self._before = sys.unraisablehook
        sys.unraisablehook = self._hook
        return self

    def __exit__(self, *exc: object) -> None:
        if self._before is not None:
            sys.unraisablehook = self._before

    def _hook(self, unraisable: Any) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            self.count += 1
            logger.debug("a Ctrl-C came during a garbage-collection callback; kept, to raise again")
            return
        (self._before or sys.__unraisablehook__)(unraisable)

    def raise_again(self) -> None:
        """Raise ``KeyboardInterrupt`` if one was dropped since the last call."""
        if self.count:
            self.count = 0
            raise KeyboardInterrupt


def setup_process(index: int, devices: tuple[str, ...], threads: int, log_level: int, method: str) -> None:
    """A spawned worker's threads and logging, and its ``multiprocessing`` start method: ``method``, its
    parent's. A process started by *spawn* would otherwise spawn its own children too, so the DataLoader workers
    of its trials pickled their dataset: a class of the user's ``__main__``, shipped to the worker by value, is
    not the ``__main__`` class a spawned child finds ("it's not the same object as __main__.Blobs"), where
    the loop run in the parent forks its DataLoader workers (Linux) and pickles nothing."""
    multiprocessing.set_start_method(method, force=True)  # bstune._spawn.start_method, in the parent
    torch.set_num_threads(threads)
    logging.basicConfig(
        level=logging.WARNING,
        format=f"bstune worker {index} ({','.join(devices)}): %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("bstune").setLevel(log_level)


def _watch(parent: int) -> None:
    """A worker's daemon thread: interrupt the worker as Ctrl-C would when its parent is gone (killed), and
    again every few seconds while it is still here after an interrupt (a KeyboardInterrupt raised inside a
    garbage-collection callback is dropped by Python: see :class:`DroppedInterrupts`)."""
    last = 0.0
    while True:
        time.sleep(0.5)
        now = time.monotonic()
        gone = os.getppid() != parent
        stuck = bool(_interrupted_at) and now - max(_interrupted_at[0], last) > _REINTERRUPT_S
        if (gone and not _interrupted_at) or stuck:
            if gone and not _interrupted_at:
                logger.warning("the study's process (pid %d) is gone: stopping", parent)
            last = now
            os.kill(os.getpid(), signal.SIGINT)


def _worker_main(args: _WorkerArgs) -> None:
    """Run trials until the study has ``n_trials`` finished; exit 130 on Ctrl-C or when the parent is gone."""
    signal.signal(signal.SIGINT, _on_sigint)
    DroppedInterrupts().__enter__()  # for the process's life: the watch interrupts it again
    threading.Thread(target=_watch, args=(args.parent,), name="bstune-worker-watch", daemon=True).start()
    try:
        take_held_sigint()  # a Ctrl-C that came while this process imported is handled here, not mid-import
        setup_process(args.index, args.devices, args.threads, args.log_level, args.start_method)
        if args.devices[0].startswith("cuda"):
            torch.cuda.set_device(args.devices[0])  # code that says just "cuda" lands on this worker's GPU too
        spec, planner, url = unpack_in_child(take_payload_file(args.payload_file))
        planner = dataclasses.replace(planner, device=args.devices[0], trial_devices=args.devices)
        label = f"worker {args.index} ({','.join(args.devices)})"
        args.work(url, spec, planner, worker=args.index, label=label, gate=args.gate, parent=args.parent)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trial is marked: nothing left to interrupt
        sys.exit(_INTERRUPTED)
    except Exception as exc:
        reason = storage_failure(exc)
        if reason is None:
            raise
        args.failures.put(reason)  # the parent says it once, as the study's error, without a traceback per worker
        sys.exit(_STORAGE_FAILED)


# -- the parent ------------------------------------------------------------------------
def run_workers(
    study: optuna.Study, settings: StudySettings, payload: bytes, work: Callable[..., None], *, where: str
) -> None:
    """Start a worker per :func:`worker_devices` entry and wait until they are done.

    Each worker calls ``work(url, spec, planner, worker=, label=, gate=, parent=)`` with
    ``payload`` unpickled and the planner's device set to the worker's: a module-level
    function (sent by reference to the spawned process).

    A worker that dies (killed, or its process crashed) is started again once on its
    device while the study is unfinished; its trial is taken over by the others (or the
    replacement) through the liveness checks. Raises :class:`WorkerCrashError` naming the
    workers and devices when the study could not finish. On Ctrl-C, every worker marks its
    running trial ``interrupted`` (it got the SIGINT too, or is sent one), workers that do
    not stop within 30 s are killed, and the interrupt goes on up: no process is left behind.
    A worker interrupted on its own (``kill -INT`` to it) interrupts the study the same way.
    A worker whose writes to the storage (``where``) fail stops the others, and the study ends
    with a :class:`~bstune.errors.StorageError` that says why.
    """
    ctx = multiprocessing.get_context("spawn")
    gate = TrialGate(ctx)
    failures = ctx.SimpleQueue()
    slots = worker_devices(settings)
    threads = worker_threads(len(slots))
    level = logging.getLogger("bstune").getEffectiveLevel()

    running: dict[int, multiprocessing.process.BaseProcess] = {}
    ctrl_c = threading.Event()

    files: dict[int, str] = {}  # each worker's payload file, by index; removed by the worker as it reads it

    def start(index: int) -> None:
        if index in files:  # a restart: the file of the worker that died, if it never took it
            remove_files([files[index]])
        files[index] = payload_file(payload, "trial-worker")
        args = _WorkerArgs(
            index, slots[index], threads, files[index], gate, failures, os.getpid(), level, work, start_method()
        )
        proc = ctx.Process(target=_worker_main, args=(args,), name=f"bstune-trial-worker-{index}", daemon=False)
        try:
            start_holding_sigint([proc.start], stopping=ctrl_c.is_set)
        finally:  # for _stop: started (not where a Ctrl-C came first, or where its start never returned)
            if proc.pid is not None:
                running[index] = proc
        if ctrl_c.is_set():
            raise KeyboardInterrupt

    said = {t.number for t in finished_trials(study)}  # the trials before this run: a resumed study's were said then
    restarted: set[int] = set()
    crashed: list[str] = []
    died_starting: set[int] = set()  # indices into crashed
    bar = progress_bar(settings.progress, "trials", total=settings.n_trials, unit="trial")
    shown = count_finished(study)
    bar.update(shown)
    dropped = DroppedInterrupts()
    # Ctrl-C sets a flag the loop reads after each wait, rather than raising wherever it lands: inside a storage
    # call (SQLAlchemy) it could leave the session unusable for the clean-up below (only from the main thread,
    # and only over Python's own handler)
    previous = signal.getsignal(signal.SIGINT)
    own = threading.current_thread() is threading.main_thread() and previous is signal.default_int_handler
    if own:
        signal.signal(signal.SIGINT, lambda signum, frame: ctrl_c.set())
    try:
        for index in range(len(slots)):
            start(index)
        while running:
            with dropped:
                wait([p.sentinel for p in running.values()], timeout=1.0)
                done = finished_trials(study)  # one read of the storage for the bar and the trial lines
            dropped.raise_again()  # a Ctrl-C Python dropped in a garbage-collection callback meanwhile
            if ctrl_c.is_set():
                raise KeyboardInterrupt
            bar.update(len(done) - shown)
            shown = len(done)
            _say_finished(done, settings.objective, said)
            for index, proc in list(running.items()):
                if proc.is_alive():
                    continue
                proc.join()
                del running[index]
                code = proc.exitcode or 0
                if code == 0:
                    continue
                if code == _INTERRUPTED:  # the worker was interrupted (Ctrl-C): so is the study
                    raise KeyboardInterrupt
                if code == _STORAGE_FAILED and not failures.empty():  # the others cannot record theirs either
                    raise storage_error(failures.get(), where)  # (a user's sys.exit(3) leaves no reason: a crash)
                where = f"worker {index} on {','.join(slots[index])} (pid {proc.pid})"
                what = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                gate.free_for(index)
                crashed.append(f"{where}: {what}")
                if code == 1 and os.path.exists(files[index]):  # an error before it took its payload: in its start
                    died_starting.add(len(crashed) - 1)
                logger.error("trial %s died (%s); its running trial will be run again", where, what)
                if index not in restarted and count_finished(study) < settings.n_trials:
                    restarted.add(index)
                    retry_abandoned(study, settings.grace_period)
                    start(index)
    except KeyboardInterrupt:
        if own:
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C stops the wait for the workers (_stop)
        _stop(list(running.values()))
        retry_abandoned(study, settings.grace_period)  # the trials of workers that had to be killed
        raise
    except BaseException:  # a storage that failed (in a worker or here), or a bug: no worker is left running
        _stop(list(running.values()), own_stop_s=0.0)
        raise
    finally:
        if own:
            signal.signal(signal.SIGINT, previous)
        bar.close()
        remove_files(files.values())  # those no worker took (a Ctrl-C first, or a worker that died starting)
    _say_finished(finished_trials(study), settings.objective, said)  # those the workers finished as they exited
    retry_abandoned(study, settings.grace_period)  # a trial of a worker that died last: queued for a resume
    if count_finished(study) < settings.n_trials and crashed:  # without a crash: they gave up on failing code
        if len(died_starting) == len(crashed):  # before any of bstune's code ran in them (each printed why)
            raise WorkerCrashError(
                f"trial workers died as they started, before running any trial: {'; '.join(crashed)}; a script "
                'that runs a study must run it under `if __name__ == "__main__":` (each worker imports the script '
                "again), and every module the task uses must import in a fresh Python process"
            )
        raise WorkerCrashError(
            f"{count_finished(study)} of {settings.n_trials} trials finished: trial workers died: "
            + "; ".join(crashed)
            + " (their trials are queued to run again; resume the study to finish it)"
        )
    if crashed:
        logger.error("the study finished, but trial workers died on the way: %s", "; ".join(crashed))


def _say_finished(done: Sequence[optuna.trial.FrozenTrial], objective: str, said: set[int]) -> None:
    """A line (logger ``bstune.trials``) for each of the finished trials ``done`` (:func:`finished_trials`) not in
    ``said`` yet, as the embedded backend says its own trials' (``bstune run`` off a terminal); trials cut short
    by a worker's death are not finished (their configs run again), as the progress bar counts them."""
    if not trial_lines.isEnabledFor(logging.INFO):
        return
    for trial in done:
        if trial.number not in said:
            said.add(trial.number)
            trial_lines.info("%s", trial_line(trial, objective))


def _stop(procs: Sequence[multiprocessing.process.BaseProcess], *, own_stop_s: float = _OWN_STOP_S) -> None:
    """After Ctrl-C: the workers stop on their own SIGINT (a terminal sends it to them too); those still
    running after a few seconds are sent one (``kill -INT`` to this process alone); those still running
    after 30 s are killed (their trials are then taken over: marked interrupted and queued)."""
    deadline = time.monotonic() + own_stop_s
    forwarded = False
    for proc in procs:
        while True:
            try:
                proc.join(max(0.0, deadline - time.monotonic()))
                if proc.is_alive() and not forwarded:
                    forwarded = True
                    for other in procs:
                        if other.is_alive() and other.pid is not None:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(other.pid, signal.SIGINT)
                    deadline = time.monotonic() + _STOP_WAIT_S
                    continue
                break
            except KeyboardInterrupt:  # another Ctrl-C while waiting: stop waiting
                deadline = 0.0
        if proc.is_alive():
            logger.warning("trial worker pid %s did not stop; killed", proc.pid)
            proc.kill()
            proc.join()
