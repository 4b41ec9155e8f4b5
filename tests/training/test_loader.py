"""Training batches loaded by DataLoader workers are exactly the in-process ones: same indices, same values."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import bstune
from bstune.errors import ConfigError
from bstune.study import StudySettings
from bstune.training import RunStatus, TrainConfig, TrialContext, run_function
from bstune.training._sampling import EpochBatchSampler, StreamBatchSampler, epoch_batches

G = torch.Generator().manual_seed(0)
X = torch.randn(230, 6, generator=G)
Y = (X[:, 0] - X[:, 2] > 0).long()
VX, VY = X[200:], Y[200:]


class Augmented(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A generic map-style dataset: each example through a deterministic transform. With ``log``, every
    fetch appends ``pid index`` to ``log/<worker>`` (``main`` outside workers): a side channel that
    survives the worker processes."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, log: Path | None = None) -> None:
        self.x, self.y, self.log = x, y, log

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.log is not None:
            info = torch.utils.data.get_worker_info()
            with open(self.log / (f"worker{info.id}" if info is not None else "main"), "a") as f:
                f.write(f"{os.getpid()} {i}\n")
        x = self.x[i]
        return torch.tanh(1.5 * x).flip(0) + 0.1 * x.roll(1), self.y[i]


def net() -> nn.Module:  # dropout: the global RNG must draw the same masks with workers as without
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


def augmented_task(log: Path | None = None) -> bstune.Task:
    return bstune.Task(
        model=net, train_data=Augmented(X[:200], Y[:200], log), val_data=(VX, VY), loss=nn.CrossEntropyLoss()
    )


def old_epoch_order(n: int, batch_size: int, seed: int, count: int) -> list[list[int]]:
    """The trainer's order before the loader (its ``_EpochSampler``, seeded with ``seed + 1``), written out."""
    gen = torch.Generator().manual_seed(seed + 1)
    perm, pos, out = torch.randperm(n, generator=gen), 0, []
    for _ in range(count):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        out.append(perm[pos : pos + batch_size].tolist())
        pos += batch_size
    return out


def fetched(log: Path, name: str) -> tuple[set[int], list[int]]:
    """The pids that fetched into ``log/name`` and the indices they fetched, in order."""
    rows = [line.split() for line in (log / name).read_text().splitlines()]
    return {int(pid) for pid, _ in rows}, [int(i) for _, i in rows]


def _history(run: bstune.TrainResult) -> list[dict[str, Any]]:
    return [r.to_dict() | {"elapsed_s": 0} for r in run.history]


def _params(model: nn.Module | None) -> torch.Tensor:
    assert model is not None
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize(("n", "batch_size", "seed"), [(200, 24, 3), (10, 5, 0), (7, 7, 11)])
def test_the_shared_sampler_keeps_the_trainers_and_the_contexts_order(n: int, batch_size: int, seed: int) -> None:
    want = old_epoch_order(n, batch_size, seed, 40)
    assert [b.tolist() for b in itertools.islice(epoch_batches(n, batch_size, seed), 40)] == want
    assert list(EpochBatchSampler(n, batch_size, seed, num_batches=40)) == want
    assert len(EpochBatchSampler(n, batch_size, seed, num_batches=40)) == 40
    context = iter(StreamBatchSampler(n, batch_size, seed, "epoch"))  # ctx.loader's stream, endless
    assert [next(context) for _ in range(40)] == want


def test_two_workers_load_the_same_batches_and_give_the_same_values_bit_for_bit(tmp_path: Path) -> None:
    cfg = dict(batch_size=24, lr=0.2, momentum=0.9, max_samples=1200, seed=3, eval_every_samples=240, track_noise=True)
    (tmp_path / "0").mkdir(), (tmp_path / "2").mkdir()
    inline = bstune.train(augmented_task(tmp_path / "0"), TrainConfig(**cfg))  # type: ignore[arg-type]
    loaded = bstune.train(augmented_task(tmp_path / "2"), TrainConfig(**cfg, num_workers=2))  # type: ignore[arg-type]
    assert inline.status is loaded.status is RunStatus.COMPLETED
    assert loaded.steps == inline.steps == 50 and loaded.samples == inline.samples == 50 * 24
    assert _history(loaded) == _history(inline)  # val_loss, train_loss, metrics, B_simple: every digit
    assert [r.val_loss for r in loaded.history] == [r.val_loss for r in inline.history]
    assert torch.equal(_params(loaded.model), _params(inline.model))
    # the training examples came through the two workers, round-robin, in the trainer's order, and no further
    want = old_epoch_order(200, 24, 3, loaded.steps)
    pids = set()
    for k in (0, 1):
        pid, indices = fetched(tmp_path / "2", f"worker{k}")
        assert indices == [i for batch in want[k::2] for i in batch]
        pids |= pid
    assert len(pids) == 2 and os.getpid() not in pids
    # in-process, the same indices went through the main process (between the evaluations' fetches)
    assert not (tmp_path / "0" / "worker0").exists()
    assert not (tmp_path / "2" / "main").exists() or fetched(tmp_path / "2", "main")[0] == {os.getpid()}


def test_tensor_data_keeps_its_in_process_fast_path(blob_task: bstune.Task, monkeypatch: pytest.MonkeyPatch) -> None:
    import bstune.training._sampling as sampling

    def no_loader(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("tensor data must not go through a DataLoader")

    calls: list[Any] = []
    fetch = sampling.fetch_batch

    def spy(dataset: Any, indices: Any) -> Any:
        if dataset is blob_task.train_dataset and len(indices) == 16:
            calls.append(indices)
        return fetch(dataset, indices)

    monkeypatch.setattr(torch.utils.data, "DataLoader", no_loader)
    monkeypatch.setattr(sampling, "fetch_batch", spy)
    cfg = TrainConfig(batch_size=16, lr=0.1, max_samples=800, seed=5)
    inline = bstune.train(blob_task, cfg)
    assert all(isinstance(idx, torch.Tensor) for idx in calls)  # one indexing operation per batch
    assert [idx.tolist() for idx in calls] == old_epoch_order(400, 16, 5, 50)
    workers = bstune.train(blob_task, TrainConfig(batch_size=16, lr=0.1, max_samples=800, seed=5, num_workers=2))
    assert _history(workers) == _history(inline)  # a tensor pair ignores the workers: nothing beats one index


def test_a_functions_loader_takes_the_trials_workers(tmp_path: Path) -> None:
    data = Augmented(X[:200], Y[:200], tmp_path)

    def fn(ctx: TrialContext) -> None:
        model = net()
        opt = ctx.make_optimizer(model.parameters())
        for xb, yb in ctx.loader(data):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ctx.step(loss)
            if ctx.at_milestone():
                with torch.no_grad():
                    ctx.report(val_loss=float(F.cross_entropy(model(VX), VY)))

    run, _ = run_function(fn, TrainConfig(batch_size=20, lr=0.1, max_samples=200, num_workers=2, prefetch_factor=1))
    assert run.status is RunStatus.COMPLETED
    assert (tmp_path / "worker0").exists() and (tmp_path / "worker1").exists()
    assert not (tmp_path / "main").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_workers", -1),
        ("num_workers", 1.5),
        ("num_workers", True),
        ("num_workers", "2"),
        ("pin_memory", "yes"),
        ("prefetch_factor", 0),
        ("prefetch_factor", 2.0),
    ],
)
def test_bad_loader_settings_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field) as caught:
        TrainConfig(batch_size=8, lr=0.1, max_samples=64, **({"num_workers": 2} | {field: value}))
    assert caught.value.field == field and repr(value) in str(caught.value)


def test_prefetch_without_workers_is_refused() -> None:
    with pytest.raises(ConfigError, match="prefetch_factor: needs num_workers > 0"):
        TrainConfig(batch_size=8, lr=0.1, max_samples=64, prefetch_factor=2)
    with pytest.raises(ConfigError, match="num_workers: must be a non-negative integer, got -1"):
        StudySettings(num_workers=-1)


def test_a_study_gives_every_trial_its_workers(tmp_path: Path) -> None:
    study = bstune.Study(
        augmented_task(tmp_path),
        {"name": "s", "batch_size": {"min": 8, "max": 16}, "lr": {"min": 0.01, "max": 0.1}},
        n_trials=1,
        budget_samples=160,
        n_evals=2,
        mode="baseline",
        rescore_top=0,
        progress=False,
        num_workers=2,
    )
    result = study.run()
    assert [t.config["num_workers"] for t in result.trials] == [2]
    assert (tmp_path / "worker0").exists() and (tmp_path / "worker1").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("workers", [0, 2])
def test_pinned_batches_on_cuda_give_the_unpinned_values(workers: int) -> None:
    cfg = dict(batch_size=24, lr=0.2, max_samples=480, seed=3, device="cuda")
    plain = bstune.train(augmented_task(), TrainConfig(**cfg, num_workers=workers, pin_memory=False))  # type: ignore[arg-type]
    pinned = bstune.train(augmented_task(), TrainConfig(**cfg, num_workers=workers, pin_memory=True))  # type: ignore[arg-type]
    assert pinned.status is RunStatus.COMPLETED and pinned.samples == plain.samples
    assert [r.val_loss for r in pinned.history] == pytest.approx([r.val_loss for r in plain.history], rel=1e-5)
