"""A LightningModule tuned through bstune.integrations.lightning trains, schedules, stops and fails as a plain loop."""

from __future__ import annotations

import dataclasses
import gc
import importlib
import importlib.util
import itertools
import logging
import math
import subprocess
import sys
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import bstune
from bstune.errors import ConfigError, DependencyError
from bstune.integrations.lightning import BstuneCallback, fit
from bstune.training import Decision, LRRamp, RunStatus, TrainConfig, TrialContext, lr_at, run_function
from tests.cli.cli_runner import ForkedCli
from tests.training.test_context import TRAIN, VX, VY, loop, net

ROOT = Path(__file__).resolve().parents[2]
VAL = DataLoader(TensorDataset(VX, VY), batch_size=len(VX))


class Lit(pl.LightningModule):
    """test_context's ``loop`` as a LightningModule: the same net, the space's optimizer, val loss logged."""

    def __init__(self, ctx: TrialContext, scheduler: bool | str = False) -> None:
        super().__init__()
        self.ctx, self.scheduler = ctx, scheduler
        self.net = net()
        self.lrs: list[float] = []  # the rate of each optimizer step
        self.validations = 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.validations += 1
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> Any:
        opt = self.ctx.make_optimizer(self.parameters())
        if not self.scheduler:
            return opt
        # a schedule of the module's own, which would run the rate at a hundredth: the trial's replaces it
        own: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.01)
        if self.scheduler == "onecycle-groups":  # two groups at different rates: their ratio is lost
            lr = self.ctx.config["lr"]
            first, second = self.net[0].parameters(), self.net[2].parameters()
            opt = torch.optim.SGD([{"params": first, "lr": 0.1 * lr}, {"params": second}], lr=lr)
            own = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.1 * lr, lr], total_steps=1000)
        elif self.scheduler == "onecycle":  # starts the rate at max_lr / 25, forgetting the one it was built at
            own = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.ctx.config["lr"], total_steps=1000)
        elif self.scheduler == "cyclic":  # starts it at base_lr
            own = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=1e-4, max_lr=self.ctx.config["lr"])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": own, "interval": "step"}}


def lit(ctx: TrialContext, **kwargs: Any) -> Lit:
    module = Lit(ctx, **kwargs)
    fit(ctx, module, TRAIN, val_dataloaders=VAL)
    return module


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bstune_example_lightning_digits", ROOT / "examples/lightning_digits.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(batch_size=42, lr=0.08, max_samples=4096),  # milestones between batches, a last partial step
        TrainConfig(batch_size=32, lr=0.3, max_samples=3000, momentum=0.9, warmup_samples=600, schedule="cosine"),
    ],
)
def test_a_lightning_trial_gets_the_plain_loops_values_to_the_last_digit(config: TrainConfig) -> None:
    mine, _ = run_function(lit, config)
    theirs, _ = run_function(loop, config)
    assert mine.status is theirs.status is RunStatus.COMPLETED, mine.message
    assert [(r.milestone, r.samples, r.step) for r in mine.history] == [
        (r.milestone, r.samples, r.step) for r in theirs.history
    ]
    assert [r.val_loss for r in mine.history] == pytest.approx([r.val_loss for r in theirs.history], rel=1e-6)
    assert [r.batch_loss for r in mine.history] == pytest.approx([r.batch_loss for r in theirs.history], rel=1e-6)
    assert (mine.samples, mine.steps, mine.message) == (theirs.samples, theirs.steps, "")


def test_a_lightning_trial_loads_with_the_studys_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """fit passed num_workers=0 to ctx.loader, so a study's num_workers (bstune run --num-workers) never reached
    a Lightning trial (a reviewer's repro)."""
    made: list[int] = []
    init = torch.utils.data.DataLoader.__init__

    def recording(self: torch.utils.data.DataLoader[Any], dataset: Any, *args: Any, **kwargs: Any) -> None:
        if dataset is TRAIN:
            made.append(kwargs.get("num_workers", 0))
        init(self, dataset, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", recording)
    result, _ = run_function(lit, TrainConfig(batch_size=32, lr=0.1, max_samples=320, num_workers=2))
    assert result.status is RunStatus.COMPLETED, result.message
    assert made == [2]


def test_eval_at_start_validates_the_untrained_module_as_milestone_zero() -> None:
    config = TrainConfig(batch_size=42, lr=0.08, max_samples=1260)
    plain, _ = run_function(lit, config)
    result, _ = run_function(lit, dataclasses.replace(config, eval_at_start=True))
    assert [r.milestone for r in result.history] == [0] + [r.milestone for r in plain.history]
    assert result.history[0].samples == 0 and result.history[0].val_loss > result.history[-1].val_loss
    assert [r.val_loss for r in result.history[1:]] == pytest.approx([r.val_loss for r in plain.history], rel=1e-6)


@pytest.mark.parametrize(
    ("scheduler", "name"), [(True, "LambdaLR"), ("onecycle", "OneCycleLR"), ("cyclic", "CyclicLR")]
)
def test_each_step_runs_at_the_trials_rate_and_the_modules_own_scheduler_is_set_aside(
    caplog: pytest.LogCaptureFixture, scheduler: bool | str, name: str
) -> None:
    """OneCycleLR and CyclicLR overwrite the rate the optimizer was built at: the trial ran at 1/25 of its rate
    (OneCycleLR's start), then was refused as built at another rate."""
    config = TrainConfig(batch_size=32, lr=0.4, max_samples=3200, warmup_samples=640, schedule="cosine")
    modules: list[Lit] = []
    with caplog.at_level(logging.WARNING, logger="bstune.integrations.lightning"):
        result, _ = run_function(lambda ctx: modules.append(lit(ctx, scheduler=scheduler)), config)
    assert result.status is RunStatus.COMPLETED and result.steps == 100, result.message
    assert modules[0].lrs == pytest.approx([lr_at(config, k * 32) for k in range(100)], rel=1e-12)
    assert modules[0].lrs[0] < modules[0].lrs[19] == pytest.approx(0.4)  # warmup, then the decay
    assert f"replaces {name} from configure_optimizers" in caplog.text


def test_a_one_cycle_schedule_over_groups_at_different_rates_is_refused() -> None:
    """OneCycleLR forgets the rates the groups were built at: going back to the optimizer's default gave every group
    the same rate, the backbone 10x the one its module chose."""
    config = TrainConfig(batch_size=32, lr=0.4, max_samples=640)
    with pytest.raises(ConfigError, match="overwrote the rates the optimizer's parameter groups were built at"):
        run_function(lambda ctx: lit(ctx, scheduler="onecycle-groups"), config)


def test_a_stop_at_a_milestone_prunes_the_trial_and_stops_the_trainer_there() -> None:
    seen: list[int] = []
    modules: list[Lit] = []

    def stop_at_third(record: Any) -> Decision:
        seen.append(record.milestone)
        return Decision.STOP if len(seen) == 3 else Decision.CONTINUE

    config = TrainConfig(batch_size=32, lr=0.1, max_samples=3200)
    result, ctx = run_function(lambda ctx: modules.append(lit(ctx)), config, stop_at_third)
    assert result.status is RunStatus.STOPPED and seen == [320, 640, 960]
    assert result.samples == 960 and ctx.done and "stopped by callback at milestone 960" in result.message
    assert modules == []  # TrialPruned left trainer.fit and the function


def test_a_loss_that_goes_non_finite_ends_the_trial_diverged() -> None:
    result, _ = run_function(lit, TrainConfig(batch_size=32, lr=1e6, max_samples=3200))
    assert result.status is RunStatus.DIVERGED and result.samples < 3200


def test_the_probes_ramp_runs_without_validating_and_stops_when_the_loss_blows_up() -> None:
    modules: list[Lit] = []
    config = TrainConfig(batch_size=32, lr=1e-3, max_samples=200 * 32, divergence_factor=None)
    ramp = LRRamp(1e-3, 1.08)
    result, ctx = run_function(lambda c: modules.append(lit(c)), config, ramp=ramp, order="draw", evaluate=False)
    assert ctx.used_scheduler and len(ctx.ramp_curve) == ctx.steps < 200  # the ramp ended the run early
    assert [lr for lr, _ in ctx.ramp_curve] == pytest.approx([ramp.lr(k) for k in range(ctx.steps)])
    assert modules[0].validations == 0 and result.history == []


def test_the_noise_tracker_observes_each_steps_gradients_before_the_optimizer_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (weight, its gradient) at each observe()

    class Spy:
        def __init__(self, model: torch.nn.Module) -> None:
            self.weight = next(model.parameters())

        def observe(self) -> None:
            assert self.weight.grad is not None
            seen.append((self.weight.detach().clone(), self.weight.grad.clone()))

        def remove(self) -> None:
            pass

    monkeypatch.setattr(TrialContext, "noise_tracker", lambda self, model: Spy(model))
    result, _ = run_function(lit, TrainConfig(batch_size=32, lr=0.1, max_samples=640, momentum=0.0))
    assert result.steps == len(seen) == 20
    for (weight, grad), (after, _) in itertools.pairwise(seen):  # plain SGD: w' = w - lr g
        torch.testing.assert_close(after, weight - 0.1 * grad)


@pytest.mark.parametrize("settings", [{"accumulate_grad_batches": 2}, {"max_steps": 10}, {"val_check_interval": 5}])
def test_fit_refuses_the_settings_the_trial_owns(settings: dict[str, Any]) -> None:
    name = next(iter(settings))
    with pytest.raises(ConfigError, match=f"bstune.integrations.lightning.fit: {name}: bstune sets"):
        run_function(lambda ctx: fit(ctx, Lit(ctx), TRAIN, VAL, **settings), TrainConfig(32, 0.1, max_samples=640))


def test_a_trainer_of_ones_own_with_accumulation_is_refused() -> None:
    def fn(ctx: TrialContext) -> None:
        trainer = pl.Trainer(
            accumulate_grad_batches=2,
            max_epochs=1,
            callbacks=[BstuneCallback(ctx)],
            logger=False,
            enable_progress_bar=False,
        )
        trainer.fit(Lit(ctx), ctx.loader(TRAIN), VAL)

    with pytest.raises(ConfigError, match="accumulate_grad_batches: got 2; bstune counts one optimizer step"):
        run_function(fn, TrainConfig(batch_size=32, lr=0.1, max_samples=640))


def test_a_module_that_logs_another_metric_is_told_to_log_the_objective() -> None:
    with pytest.raises(ConfigError, match=r"logged val_loss but not the study's objective 'val_accuracy'.*self.log"):
        run_function(lit, TrainConfig(batch_size=32, lr=0.1, max_samples=640), objective="val_accuracy")


def test_bstune_does_not_import_lightning_and_says_what_to_install_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    code = "import sys, bstune, bstune.integrations; print(any(m.split('.')[0] == 'lightning' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
    for name in ("lightning", "lightning.pytorch"):
        monkeypatch.setitem(sys.modules, name, None)  # what the import system does for a missing package
    monkeypatch.delitem(sys.modules, "bstune.integrations.lightning")
    with pytest.raises(DependencyError, match=r"pip install 'bstune\[lightning\]'"):
        importlib.import_module("bstune.integrations.lightning")


SPACE: dict[str, Any] = {
    "name": "digits",
    "batch_size": {"min": 16, "max": 128},
    "lr": {"min": 1e-3, "max": 2.0},
    "optimizer": {"family": "sgd", "momentum": 0.9},
    "params": {"model.hidden": {"type": "int", "low": 16, "high": 64, "log": True}},
}


def test_a_baseline_study_of_the_lightning_example_completes_trials_with_values() -> None:
    example = load_example()
    study = bstune.Study(
        example.train, SPACE, n_trials=3, budget_samples=2560, mode="baseline", rescore_top=0, progress=False
    )
    result = study.run()
    completed = [t for t in result.trials if t.status == "completed"]
    assert completed and all(t.value is not None and math.isfinite(t.value) for t in completed)
    # what ctx.config held: the space's optimizer settings (SGD, momentum 0.9) beside the searched ones
    assert set(result.best_config) == {"batch_size", "lr", "model.hidden", "momentum", "weight_decay"}
    assert result.best_config["momentum"] == 0.9
    assert all("val_accuracy" in r and "train_loss" in r for t in completed for r in t.history)


@pytest.mark.skipif(
    not hasattr(bstune.noise, "PerExampleNorms"), reason="the noise tracker's per-example norms are not merged yet"
)
def test_the_probe_frees_the_noise_runs_lightning_module_before_its_larger_batches() -> None:
    """A module and its Trainer hold each other: dropping the probe's references left the noise run's module in
    memory until a collection nothing triggered (a reviewer, with the collector off to make it certain)."""
    from bstune.metrics import Direction
    from bstune.space import SearchSpace
    from bstune.study import FunctionJob, ProbeSettings, probe_function

    space = SearchSpace.coerce({k: v for k, v in SPACE.items() if k != "params"})
    noise_run: list[weakref.ref[Lit]] = []
    alive_after: list[bool] = []

    def fn(ctx: TrialContext) -> None:
        if noise_run:
            alive_after.append(noise_run[0]() is not None)
        module = Lit(ctx)
        if ctx.train_config.track_noise and not noise_run:
            noise_run.append(weakref.ref(module))
        fit(ctx, module, TRAIN, val_dataloaders=VAL)

    gc.disable()
    try:
        job = FunctionJob(fn, "val_loss", Direction.MINIMIZE, space.optimizer)
        probe_function(job, space, ProbeSettings(throughput_batches=(8, 32)), batch_cap=128)
    finally:
        gc.enable()
    assert noise_run and len(alive_after) >= 2 and not any(alive_after)


def test_a_prior_study_of_the_lightning_example_probes_through_the_trainer() -> None:
    """A space of B and lr alone, trials shorter than the probe's own run: the probe's run through the
    Trainer is the first trial, and the Trainer retrained at its config validates to the same values."""
    example = load_example()
    space = {k: v for k, v in SPACE.items() if k != "params"}
    result = bstune.Study(
        example.train, space, n_trials=2, budget_samples=2560, mode="prior", rescore_top=0, progress=False
    ).run()
    probe, first = result.probe, result.trials[0]
    assert probe is not None and probe.b_simple > 0 and probe.lr_ceiling > 0 and probe.throughput
    assert first.from_probe and all(t.status == "completed" for t in result.trials)
    assert probe.run is not None and [h["milestone"] for h in first.history][-1] == 2560
    config = TrainConfig(
        batch_size=first.batch_size,  # type: ignore[arg-type]
        lr=first.lr,  # type: ignore[arg-type]
        max_samples=2560,
        eval_every_samples=probe.run["config"]["eval_every_samples"],
    )
    spec = bstune.SearchSpace.coerce(space).optimizer
    again, _ = run_function(example.train, config, optimizer=spec)
    assert [r.val_loss for r in again.history] == pytest.approx([h["val_loss"] for h in first.history], rel=1e-6)


@pytest.mark.slow
def test_bstune_run_of_the_lightning_example_writes_a_report(tmp_path: Path, forked_cli: ForkedCli) -> None:
    out = tmp_path / "lit"
    argv = ["run", "examples/lightning_digits.py", "--space", "search_spaces/mlp_classifier.yaml", "--trials", "3",
            "--budget-samples", "9000", "--mode", "baseline", "--rescore-top", "0", "--no-progress", "--out", str(out)]  # fmt: skip
    proc = forked_cli.completed(argv, ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "report.md").is_file() and (out / "report.json").is_file()
    assert "GPU available" not in proc.stdout + proc.stderr  # Lightning's lines stay quiet in a study
