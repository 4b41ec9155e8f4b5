"""What the probe spends: its settings, its batch size, the length of its run, its throughput ladder.

Shared by the probe of a task (:func:`~bstune.study.run_probe`) and of a training function
(:func:`~bstune.study.probe_function`), and by a study's warning, before the probe runs, that it
would cost more than the trials (:func:`probe_cost`). Every amount scales with the problem: its
training set, the space's batch range, the study's trial budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bstune.errors import ConfigError
from bstune.task import Task

__all__ = [
    "THROUGHPUT_MIN_TIMED",
    "THROUGHPUT_WARMUP",
    "ProbeSettings",
    "failed_run_advice",
    "ladder_plan",
    "ladder_rungs",
    "probe_batch",
    "probe_cost",
    "run_eval_every",
    "run_length",
]


@dataclass(frozen=True)
class ProbeSettings:
    """How much the probe spends. Every default scales with the problem.

    Example:
        >>> ProbeSettings(train_samples=20_000).lr_fraction
        0.25
    """

    batch_size: int | None = None  # None: 64, or less for small datasets
    lr_steps: int = 40  # steps of the LR range test (each one batch)
    large_batch_factor: int = 8  # a second range test at this multiple of the probe batch bounds the flat part
    lr_fraction: float = 0.25  # probe lr = this x the range test's ceiling (optimum ~ a few x below the edge)
    # probe training run before B_simple is measured; None: 5x the range test's samples, at least half an epoch.
    # Given budget_samples, the run goes on to one trial's length, B_simple measured at the first milestone past this
    train_samples: int | None = None
    rel_precision: float = 0.15  # final B_simple measurement: stop at this interval half-width
    measure_samples: int | None = None  # most examples per measurement stage; None: 50 batches
    throughput_steps: int = 7  # most timed steps per ladder rung, after 2 untimed ones; the rate is the median step's
    throughput_batches: tuple[int, ...] | None = None  # None: the range's ends and every 4th power of two between
    # most of one trial's budget the throughput ladder spends, when the study gives one (at least 1 warm-up
    # + 3 timed steps per rung all the same): a quarter leaves the ladder ~1/4 trial where it cost 1-2 trials
    throughput_fraction: float = 0.25
    # examples of the curvature-aware B_noise beside B_simple (as many again for its Hessian): only for
    # models bstune.noise.curvature_skip_reason passes (small, no BatchNorm); 0 turns it off
    curvature_examples: int = 256
    # most time the curvature-aware B_noise may take, as a fraction of the probe run's training time, or
    # CURVATURE_MIN_SECONDS where that is more (its first HVPs are timed: a model whose examples are costly,
    # e.g. a sequence model, is skipped with the reason)
    curvature_time_fraction: float = 0.25

    def __post_init__(self) -> None:
        for name in ("lr_steps", "throughput_steps"):
            if getattr(self, name) < 2:
                raise ConfigError(f"must be >= 2, got {getattr(self, name)}", source="ProbeSettings", field=name)
        for name in ("lr_fraction", "throughput_fraction", "curvature_time_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"must be in (0, 1], got {getattr(self, name)}", source="ProbeSettings", field=name)
        if self.curvature_examples != 0 and self.curvature_examples < 4:
            raise ConfigError(
                f"must be 0 (off) or at least 4, got {self.curvature_examples}",
                source="ProbeSettings",
                field="curvature_examples",
            )


def probe_batch(n_train: int | None, settings: ProbeSettings, batch_min: int, batch_cap: int) -> int:
    """The range tests' and the noise run's batch size: 64, or a 16th of a small training set."""
    default = 64 if n_train is None else min(64, max(2, n_train // 16))
    b = settings.batch_size if settings.batch_size is not None else default
    return int(min(max(b, batch_min, 2), batch_cap))


def probe_cost(
    task: Task | None,
    settings: ProbeSettings,
    *,
    batch_min: int,
    batch_max: int,
    batch_round: int = 1,
    budget_samples: int | None = None,
) -> int:
    """Training samples the probe will spend at least (where every batch size fits): its training run
    and the throughput ladder (:func:`ladder_plan`), with ``budget_samples`` as
    :func:`~bstune.study.run_probe` takes it.

    The range tests and the noise measurement come on top (they stop when they have
    found what they look for), so the probe's ``samples_used`` is never below this.
    """
    n_train = task.n_train if task is not None else None  # a training function's data are known when it runs
    batch = probe_batch(n_train, settings, batch_min, batch_max)
    rungs = ladder_rungs(n_train, settings, batch_min, batch_max, batch_round, None)
    ladder = sum(b * (warmup + timed) for b, warmup, timed in ladder_plan(rungs, settings, budget_samples))
    # a task's run is one trial; a function's the earlier of its own rule and one trial (_probe_function.py)
    run = run_length(n_train, settings, batch, budget_samples if task is not None else None)
    if task is None and budget_samples is not None:
        run = min(run, budget_samples)
    return run + ladder


def run_length(n_train: int | None, settings: ProbeSettings, batch: int, budget_samples: int | None) -> int:
    """Samples of the probe's training run: one trial's budget when known, else ``settings.train_samples``,
    by default 5x the range test's and at least half an epoch."""
    if budget_samples is not None:
        return budget_samples
    return settings.train_samples or max(5 * settings.lr_steps * batch, (n_train or 0) // 2)


def run_eval_every(batch: int, train_samples: int, every: int | None, *, trial: bool) -> int:
    """Samples between the probe run's evaluations: where the run is a ``trial``, a trial's milestones
    (``every``; ``None``: ten, the trainer's default), else five evaluations, at least four steps apart.

    Example:
        >>> run_eval_every(64, 10_000, None, trial=True), run_eval_every(64, 10_000, 500, trial=False)
        (1000, 2000)
    """
    return (every or max(1, train_samples // 10)) if trial else max(batch * 4, train_samples // 5)


def ladder_rungs(
    n_train: int | None, settings: ProbeSettings, batch_min: int, batch_max: int, batch_round: int, cap: int | None
) -> list[int]:
    """The batch sizes whose throughput the probe measures, smallest first."""
    rungs = settings.throughput_batches or _ladder(batch_min, batch_max, batch_round)
    top = n_train if n_train is not None else batch_max
    return sorted(r for r in rungs if r <= min(top, cap or top))


THROUGHPUT_WARMUP = 2  # untimed steps per rung before measure_throughput's timed ones (1 where the budget is tight)
THROUGHPUT_MIN_TIMED = 3  # fewest timed steps per rung (a median and an IQR), however tight the budget


def ladder_plan(
    rungs: Sequence[int], settings: ProbeSettings, budget_samples: int | None
) -> list[tuple[int, int, int]]:
    """``(batch size, warm-up steps, timed steps)`` for each rung, smallest first.

    Without a trial budget every rung gets ``THROUGHPUT_WARMUP`` untimed and
    ``settings.throughput_steps`` timed steps. With one, the ladder spends at most
    ``settings.throughput_fraction`` of it: the rungs, smallest first, each take an equal
    share of what is left (a small batch needs less than its share and passes the rest
    up), but never fewer than 1 warm-up and ``THROUGHPUT_MIN_TIMED`` timed steps (a
    median and an IQR), so the largest rungs may take the ladder past its share. A large
    batch's step is the longest, and the clock's noise the smallest part of it, so it is
    the one that can do with fewer steps.

    Example:
        >>> ladder_plan([8, 32, 128, 512], ProbeSettings(), None)[-1]  # no budget: 2 + 7 steps everywhere
        (512, 2, 7)
        >>> ladder_plan([8, 32, 128, 512], ProbeSettings(), 10_000)  # a quarter of it: 2,500 samples
        [(8, 2, 7), (32, 2, 7), (128, 2, 6), (512, 1, 3)]
    """
    most = THROUGHPUT_WARMUP + settings.throughput_steps
    fewest_timed = min(THROUGHPUT_MIN_TIMED, settings.throughput_steps)
    left = None if budget_samples is None else int(settings.throughput_fraction * budget_samples)
    plan = []
    for i, b in enumerate(rungs):
        n = most if left is None else min(most, max(1 + fewest_timed, left // ((len(rungs) - i) * b)))
        timed = min(settings.throughput_steps, n - THROUGHPUT_WARMUP)
        if timed < fewest_timed:  # too tight for both warm-ups: one is enough to leave the first-call costs out
            timed = n - 1
        plan.append((b, n - timed, timed))
        if left is not None:
            left -= n * b
    return plan


def _ladder(low: int, high: int, multiple: int) -> list[int]:
    """``low``, ``high`` and every fourth power of two between them (those a factor of 4,
    16, ... below the power of two at or above ``high``), each rounded down to a multiple
    of ``multiple`` (at least ``multiple``).

    Throughput is a smooth function of B, interpolated as a power law between rungs
    (:func:`bstune.analysis.throughput_at`); a factor of 4 between them resolves where it
    bends (the device filling up) while the rungs below the largest cost a third of it
    all together, not as much again as it does (every power of two).

    Example:
        >>> _ladder(8, 1024, 1)
        [8, 16, 64, 256, 1024]
        >>> _ladder(2, 1000, 1)  # 1000 is no power of two: 4x below 1024 and on down
        [2, 4, 16, 64, 256, 1000]
    """
    rungs = {low, high}
    top = 1 << max(0, (high - 1).bit_length())  # the power of two at or above high
    b = top // 4
    while b > low:
        if b < high:
            rungs.add(b)
        b //= 4
    return sorted({max(multiple, (r // multiple) * multiple) for r in rungs})


def failed_run_advice(message: str, lr: float, lr_min: float) -> str:
    """What to change after the probe's run failed with ``message`` at rate ``lr`` (the space's ``lr_min`` the least
    it may take).

    Example:
        >>> failed_run_advice("training loss became nan at step 5", 1e-4, 1e-4).split(",")[0]
        "the run diverged even at the space's smallest rate"
    """
    if "reported metric" in message:
        return "a metric the loop reported was not finite: check how the loop computes it"
    if lr <= lr_min * (1 + 1e-9):
        return (
            "the run diverged even at the space's smallest rate, lr.min: check the loss and the data "
            "(NaN or inf inputs, a log of 0) before the learning rate"
        )
    return "lower the space's lr.max or set ProbeSettings(lr_fraction=...) smaller"
