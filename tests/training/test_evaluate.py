"""Whole-set metrics over evaluation batches: what is joined, and where they fall back to the batches' mean."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from typing import Any

import pytest
import torch

import bstune
from bstune.errors import ConfigError
from bstune.training import _evaluate
from bstune.training._evaluate import MetricSet

Pair = namedtuple("Pair", ["logits", "aux"])


class Output(OrderedDict):  # type: ignore[type-arg]
    """A HuggingFace-style ModelOutput: a mapping with attribute access, built from keywords."""

    def __getattr__(self, name: str) -> Any:
        return self[name]


def _batches(n: int = 10, size: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    return [(x[i : i + size], y[i : i + size]) for i in range(0, n, size)]


def _run(metric: bstune.Metric, batches: list[tuple[Any, Any]]) -> float:
    metrics = MetricSet({"m": metric})
    for out, tgt in batches:
        metrics.add(out, tgt, len(tgt) if not isinstance(tgt, dict) else len(tgt["y"]))
    return metrics.values(sum(len(t) if not isinstance(t, dict) else len(t["y"]) for _, t in batches))["m"]


def test_structured_outputs_and_per_example_targets_are_joined_as_their_own_kind() -> None:
    """A review found namedtuples and ModelOutputs broken by the join, and per-example lists zipped, not joined."""
    batches = _batches()
    logits = torch.cat([o for o, _ in batches])
    labels = torch.cat([t for _, t in batches])
    whole = float((logits.argmax(1) == labels).float().mean())

    def on_pair(out: Pair, y: torch.Tensor) -> float:
        assert isinstance(out, Pair) and out.aux.shape == (len(y), 1)
        return float((out.logits.argmax(1) == y).float().mean())

    pairs = [(Pair(o, torch.zeros(len(o), 1)), t) for o, t in batches]
    assert _run(bstune.Metric(on_pair, "maximize"), pairs) == pytest.approx(whole)

    def on_output(out: Output, y: dict[str, torch.Tensor]) -> float:
        assert isinstance(out, Output)
        return float((out.logits.argmax(1) == y["y"]).float().mean())

    mapped = [(Output(logits=o), {"y": t}) for o, t in batches]
    assert _run(bstune.Metric(on_output, "maximize"), mapped) == pytest.approx(whole)

    def on_examples(out: torch.Tensor, y: list[dict[str, int]]) -> float:  # detection-style: one dict per example
        assert len(y) == len(out)
        return float(sum(int(o.argmax()) == d["label"] for o, d in zip(out, y, strict=True)) / len(y))

    listed = [(o, [{"label": int(v)} for v in t]) for o, t in batches]  # batches of 4, 4 and 2
    assert _run(bstune.Metric(on_examples, "maximize"), listed) == pytest.approx(whole)


def test_batches_that_cannot_be_joined_or_are_too_large_fall_back_to_the_batches_mean_and_say_so(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_evaluate, "_warned", set())
    width = bstune.Metric(lambda out, y: float(out.shape[1]), "maximize")  # sequences padded per batch
    with caplog.at_level("WARNING", logger="bstune.training._evaluate"):
        padded = [(torch.zeros(4, 3), torch.zeros(4)), (torch.zeros(4, 5), torch.zeros(4))]
        assert _run(width, padded) == pytest.approx(4.0)  # (3 * 4 + 5 * 4) / 8
    (said,) = [r.getMessage() for r in caplog.records]
    assert "their batches cannot be joined" in said and "over='batch'" in said
    caplog.clear()
    monkeypatch.setattr(_evaluate, "_warned", set())
    monkeypatch.setattr(_evaluate, "KEEP_LIMIT_BYTES", 100)  # a second batch passes it
    mean = bstune.Metric(lambda out, y: float(out.mean()), "maximize")
    batches = [(torch.full((4, 3), float(i)), torch.zeros(4)) for i in range(3)]
    with caplog.at_level("WARNING", logger="bstune.training._evaluate"):
        assert _run(mean, batches) == pytest.approx(1.0)
    assert "the evaluation set's outputs pass" in caplog.records[0].getMessage()
    with pytest.raises(ConfigError, match="over"):
        bstune.Metric(lambda out, t: 1.0, "maximize", over="epoch")  # type: ignore[arg-type]


def test_ranks_that_kept_and_ranks_that_fell_back_combine_to_a_mean_over_examples() -> None:
    """Under data parallelism one rank may fall back (its outputs passed the limit) while another kept them."""
    metric = {"m": bstune.Metric(lambda out, y: float(out.mean()), "maximize")}
    kept, fell = MetricSet(metric), MetricSet(metric)
    kept.add(torch.full((4, 2), 1.0), torch.zeros(4), 4)
    fell.add(torch.full((6, 2), 2.0), torch.zeros(6), 6)
    fell._per_batch("a test")
    assert kept.combine([kept.partial(), fell.partial()], 10)["m"] == pytest.approx((4 * 1.0 + 6 * 2.0) / 10)


def test_a_metric_that_raises_on_the_whole_set_is_named() -> None:
    """A newcomer's accuracy broke only past 64 examples (the Task's check gives it 2): the study said "The size of
    tensor a (455) must match ..." without naming the metric."""

    def accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if len(y) > 4:
            raise RuntimeError("The size of tensor a (10) must match the size of tensor b (4)")
        return (out.argmax(1) == y).float().mean()

    with pytest.raises(bstune.errors.UserCodeError, match=r"metric 'm' raised on 10 evaluation examples: Runt"):
        _run(bstune.Metric(accuracy, direction="maximize"), _batches(n=10, size=4))
