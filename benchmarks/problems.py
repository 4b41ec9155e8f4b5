"""The benchmark problems: what each trains, its search space, budget and sweep grid.

Five problems that run on a 2-core CPU in minutes each:

* ``digits_mlp``  the MLP of ``examples/digits_mlp.py`` (SGD, momentum 0.9);
* ``digits_cnn``  the small CNN of ``examples/digits_cnn.py`` on the same data as 1x8x8 images;
* ``char_lm``     the character-level transformer of ``examples/char_lm.py`` on
                  ``pydoc_data.topics``, shrunk (32-char context, width 32, one layer,
                  256 validation sequences) so a run takes seconds, Adam;
* ``char_lm_adamw`` the same with AdamW (decoupled weight decay 0.1);
* ``linreg``      linear regression with Gaussian inputs, x ~ N(0, I_d), y = w*·x + σε,
                  where B_simple = ((d+1)|δ|² + dσ²)/|δ|² at w = w* + δ is known exactly
                  (``tests/noise/test_measure.py`` derives it), SGD without momentum.

``quick`` shrinks every grid to a smoke test; ``full`` is what ``benchmarks/RESULTS.md`` reports.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

import bstune

ROOT = Path(__file__).resolve().parents[1]


def _example(name: str) -> Any:
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bstune_bench_example_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log_grid(low: float, high: float, per_decade: int) -> list[float]:
    n = round(math.log10(high / low) * per_decade)
    return [float(f"{low * 10 ** (i / per_decade):.4g}") for i in range(n + 1)]


def _pow2(low: int, high: int) -> list[int]:
    return [2**k for k in range(int(math.log2(low)), int(math.log2(high)) + 1)]


# -- the closed-form problem ----------------------------------------------------------------------
LINREG_D, LINREG_SIGMA, LINREG_N = 8, 1.0, 8192


def linreg_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, w_star): x ~ N(0, I_d), y = x·w* + σε, w* ~ N(0, I_d)."""
    gen = torch.Generator().manual_seed(seed)
    w_star = torch.randn(LINREG_D, generator=gen)
    x = torch.randn(LINREG_N + 1024, LINREG_D, generator=gen)
    y = x @ w_star + LINREG_SIGMA * torch.randn(len(x), generator=gen)
    return x, y[:, None], w_star


def linreg_closed_form(delta_sq: float) -> float:
    """B_simple of the population at |w − w*|² = delta_sq (H ∝ I, so B_noise is the same)."""
    d = LINREG_D
    return ((d + 1) * delta_sq + d * LINREG_SIGMA**2) / delta_sq


def _linreg_task() -> bstune.Task:
    x, y, _ = linreg_data()

    def model() -> nn.Module:
        return nn.Linear(LINREG_D, 1, bias=False)

    return bstune.Task(
        model=model,
        train_data=(x[:LINREG_N], y[:LINREG_N]),
        val_data=(x[LINREG_N:], y[LINREG_N:]),
        loss=nn.MSELoss(),
        optimizer=bstune.OptimizerSpec("sgd", momentum=0.0),
        name="linreg",
    )


# AdamW's decoupled weight decay for ``char_lm_adamw``: 0.1, the usual transformer setting
# (GPT-2/3, nanoGPT). torch's default 0.01 would shrink the weights by at most
# exp(-Σ η·λ) = exp(-0.01·18000/B·η) ≈ 0.96 at B=4, η=0.01 over the budget, i.e. the
# problem would be char_lm again; at 0.1 the decay acts (≈0.64 there) and couples with η and B.
CHAR_LM_WEIGHT_DECAY = 0.1


def _char_lm_task(optimizer: bstune.OptimizerSpec | str = "adam", name: str = "char_lm") -> bstune.Task:
    full = _example("char_lm").make_task(context=32, dim=32, layers=1)
    # 256 of the 1453 validation sequences: evaluation would otherwise cost more than training
    return bstune.Task(
        model=full.model,
        train_data=full.train_data,
        val_data=Subset(full.val_data, range(256)),
        loss=full.loss,
        metrics=full.metrics,
        optimizer=optimizer,
        name=name,
        validate=False,
    )


@dataclass(frozen=True)
class Problem:
    """One benchmark problem and its settings (grids differ between ``quick`` and ``full``)."""

    name: str
    make_task: Callable[[], bstune.Task]
    space: dict[str, Any]
    budget: int  # samples of a full trial / sweep run
    sweep_batches: dict[str, list[int]]  # suite -> batch sizes of the sweep
    sweep_lrs: dict[str, list[float]]  # suite -> learning rates of the sweep (every batch size)
    sweep_seeds: dict[str, list[int]]  # suite -> seeds averaged in the ground truth
    noise_config: tuple[int, float]  # (B, lr) of the run whose checkpoints the noise estimators are judged at
    n_evals: int = 9  # as bstune.Study: evaluations (and pruning decisions) per full trial
    # suite -> the seeds that judge configs near the best (default: sweep_seeds). Cells within
    # refine_margin of the best on sweep_seeds are run at every judge seed too, and a study's
    # incumbents are retrained at them (benchmarks/efficiency.py: Evaluator)
    judge_seeds: dict[str, list[int]] = field(default_factory=dict)
    refine_margin: float = 0.25
    train_kwargs: dict[str, Any] = field(default_factory=dict)  # extra TrainConfig fields (evaluation size)
    note: str = ""

    def seeds_to_judge(self, suite: str) -> list[int]:
        """The sweep's seeds, then the extra judge seeds (a superset, sweep seeds first)."""
        base = self.sweep_seeds[suite]
        return [*base, *(s for s in self.judge_seeds.get(suite, []) if s not in base)]

    def train_config(self, batch: int, lr: float, seed: int, *, n_evals: int | None = None) -> bstune.TrainConfig:
        every = -(-self.budget // (n_evals or self.n_evals))  # ceil, as bstune.Study
        return bstune.TrainConfig(
            batch_size=batch,
            lr=lr,
            max_samples=self.budget,
            eval_every_samples=every,
            seed=seed,
            device="cpu",
            **self.train_kwargs,
        )


# Ground-truth seeds are held out from the study seeds (0, 1, ...): a study's trials train at
# its own seed, so judging its configs on that seed would reward the seed's luck.
EVAL_SEEDS = [100, 101, 102]

PROBLEMS: dict[str, Problem] = {
    "digits_mlp": Problem(
        name="digits_mlp",
        make_task=lambda: _example("digits_mlp").make_task(),
        space={
            "name": "digits_mlp_bench",
            "optimizer": {"family": "sgd", "momentum": 0.9},
            "batch_size": {"min": 8, "max": 1024},
            "lr": {"min": 1e-3, "max": 10.0},
        },
        budget=30_000,
        sweep_batches={"quick": [8, 64, 512], "full": _pow2(8, 1024)},
        sweep_lrs={"quick": _log_grid(1e-2, 1.0, 1), "full": _log_grid(1e-3, 10.0, 4)},
        sweep_seeds={"quick": EVAL_SEEDS[:1], "full": EVAL_SEEDS},
        # one seed moves a near-best config by ~9 %, so 3 seeds leave the grid best uncertain by ~5 %,
        # over twice the 2 % target: near the best, 32 seeds (standard error ~1.5 %, less when paired)
        judge_seeds={"full": list(range(100, 132))},
        noise_config=(64, 0.1),
    ),
    "digits_cnn": Problem(
        name="digits_cnn",
        make_task=lambda: _example("digits_cnn").make_task(),
        space={
            "name": "digits_cnn_bench",
            "optimizer": {"family": "sgd", "momentum": 0.9},
            "batch_size": {"min": 8, "max": 512},
            "lr": {"min": 1e-3, "max": 10.0},
        },
        budget=30_000,
        sweep_batches={"quick": [8, 64, 512], "full": _pow2(8, 512)},
        sweep_lrs={"quick": _log_grid(1e-2, 1.0, 1), "full": _log_grid(1e-3, 10.0, 2)},
        sweep_seeds={"quick": EVAL_SEEDS[:1], "full": EVAL_SEEDS},
        noise_config=(64, 0.1),
    ),
    "char_lm": Problem(
        name="char_lm",
        make_task=_char_lm_task,
        space={
            "name": "char_lm_bench",
            "optimizer": {"family": "adam"},
            "batch_size": {"min": 4, "max": 512},
            "lr": {"min": 1e-4, "max": 0.1},
        },
        budget=18_000,
        # narrower than the space (compute), but reaching B=4: the best cell of a grid from B=8 was at B=8
        sweep_batches={"quick": [8, 64], "full": _pow2(4, 128)},
        sweep_lrs={"quick": [3e-3, 1e-2], "full": _log_grid(1e-3, 0.1, 4)},
        sweep_seeds={"quick": EVAL_SEEDS[:1], "full": EVAL_SEEDS},
        noise_config=(32, 3e-3),
        train_kwargs={"eval_train_examples": 256},
        note="32-char context, width 32, 1 layer; 256 validation sequences",
    ),
    "linreg": Problem(
        name="linreg",
        make_task=_linreg_task,
        space={
            "name": "linreg_bench",
            "optimizer": {"family": "sgd", "momentum": 0.0},
            "batch_size": {"min": 2, "max": 2048},
            "lr": {"min": 1e-4, "max": 1.0},
        },
        budget=18_000,
        sweep_batches={"quick": [4, 64, 1024], "full": _pow2(2, 2048)},
        sweep_lrs={"quick": _log_grid(1e-3, 0.1, 1), "full": _log_grid(1e-3, 1.0, 4)},
        sweep_seeds={"quick": EVAL_SEEDS[:1], "full": EVAL_SEEDS},
        judge_seeds={"quick": EVAL_SEEDS[:2]},  # exercises the refinement and the sequential judge
        noise_config=(16, 0.01),
        note=f"d={LINREG_D}, σ={LINREG_SIGMA}, {LINREG_N} training examples",
    ),
}

# char_lm with AdamW: the same data, budget and grid, so the two grids compare the Adam
# family's LR rule (benchmarks/lr_rule.py) with and without decoupled weight decay
PROBLEMS["char_lm_adamw"] = dataclasses.replace(
    PROBLEMS["char_lm"],
    name="char_lm_adamw",
    make_task=lambda: _char_lm_task(
        bstune.OptimizerSpec("adamw", weight_decay=CHAR_LM_WEIGHT_DECAY), name="char_lm_adamw"
    ),
    space=PROBLEMS["char_lm"].space
    | {"name": "char_lm_adamw_bench", "optimizer": {"family": "adamw", "weight_decay": CHAR_LM_WEIGHT_DECAY}},
    note=f"char_lm with AdamW, weight decay {CHAR_LM_WEIGHT_DECAY}",
)


@cache
def task_of(name: str) -> bstune.Task:
    """The problem's task, built once per process."""
    return PROBLEMS[name].make_task()
