"""A metric's direction: the enum, the names that need no declaration, the Task's metrics, a study's objective."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import bstune
from bstune.errors import ConfigError, TaskError
from bstune.metrics import Direction, Metric, infer_direction
from tests.conftest import accuracy, make_classification, small_mlp

X, Y = make_classification(n=64)


def _task(metrics: dict[str, Any]) -> bstune.Task:
    return bstune.Task(
        model=small_mlp, train_data=(X, Y), val_data=(X[:16], Y[:16]), loss=torch.nn.CrossEntropyLoss(), metrics=metrics
    )


def test_direction_compares_ranks_and_reaches_each_way() -> None:
    up, down = Direction.MAXIMIZE, Direction.MINIMIZE
    assert up == "maximize" and Direction("minimize") is down and str(up) == "maximize"
    assert up.best([0.2, 0.9, 0.5]) == 0.9 and down.best([0.2, 0.9, 0.5]) == 0.2
    assert up.better(0.9, 0.5) and not up.better(0.5, 0.9) and down.better(0.5, 0.9)
    assert not up.better(0.5, 0.5)
    assert up.reached(0.85, 0.85) and up.reached(0.9, 0.85) and not up.reached(0.8, 0.85)
    assert down.reached(0.3, 0.3) and down.reached(0.2, 0.3) and not down.reached(0.4, 0.3)
    assert sorted([0.2, 0.9, 0.5], key=lambda v: up.sign * v) == [0.9, 0.5, 0.2]
    with pytest.raises(ConfigError, match="must be 'minimize' or 'maximize', got 'up'") as info:
        Direction.coerce("up", source="Study")
    assert (info.value.source, info.value.field) == ("Study", "direction")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("accuracy", "maximize"),
        ("acc", "maximize"),
        ("val_accuracy", "maximize"),
        ("next_char_accuracy", "maximize"),
        ("f1", "maximize"),
        ("macro_f1", "maximize"),
        ("auc", "maximize"),
        ("precision", "maximize"),
        ("recall", "maximize"),
        ("top1", "maximize"),
        ("top5_acc", "maximize"),
        ("loss", "minimize"),
        ("val_loss", "minimize"),
        ("celoss", "minimize"),
        ("error_rate", "minimize"),
        ("mse", "minimize"),
        ("mae", "minimize"),
        ("rmse", "minimize"),
        ("nll", "minimize"),
        ("perplexity", "minimize"),
        ("score", None),  # says nothing
        ("accumulated", None),  # "acc" only as a whole word
        ("top1_error", None),  # says both
        ("accuracy_loss", None),
        ("top1_err", None),  # says both: a newcomer's top1_err was maximized, for its word top1
        ("val_err", "minimize"),
        ("val_acc_err", None),
        ("1-acc", None),  # one minus an accuracy
        ("1-val_acc", None),  # a newcomer's was maximized
        ("1 - test_accuracy", None),
        ("neg_mse", None),  # scikit-learn's neg_mean_squared_error is maximized: its mse word said minimize
        ("negative_loss", None),
        ("inv_perplexity", None),
        ("val_neg_mse", None),
        ("val_1-acc", None),  # one minus, after a split's name
        ("eval/1-accuracy", None),
        ("top-1-acc", "maximize"),  # a top-1 accuracy, not one minus an accuracy
        ("val_f1_neg", "maximize"),  # the negative class's F1
        ("recall_negative", "maximize"),
        ("neg_log_likelihood_loss", "minimize"),  # a negative log-likelihood is a loss
        ("neg_log_likelihood", None),  # says neither
        ("val_r2", "maximize"),  # the coefficient of determination
        ("r2_score", "maximize"),
        ("1-nn_acc", "maximize"),  # a 1-nearest-neighbour accuracy
        ("1-shot_acc", "maximize"),
        ("err_reduction", None),  # a reduction of an error: larger is better
        ("accuracy_drop", None),  # a drop of an accuracy: smaller is better
        ("loss_drop", None),  # a drop of a loss: larger is better
        ("val_acc_std", None),
        ("acc@1", "maximize"),
        ("error", "minimize"),
        ("terror_count", "minimize"),  # "error" anywhere: a name of that kind is declared
    ],
)
def test_names_that_settle_the_direction(name: str, expected: str | None) -> None:
    got = infer_direction(name)
    assert (got.value if got else None) == expected


def test_task_metrics_carry_their_direction() -> None:
    def error_rate(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1 - accuracy(out, y)

    task = _task(
        {
            "accuracy": accuracy,  # the name says it
            "error": error_rate,
            "score": Metric(accuracy, direction="maximize"),  # declared
            "hits": Metric(accuracy, direction=Direction.MAXIMIZE),
            "top1_error": Metric(error_rate, direction="minimize"),  # declared: the name's ambiguity does not matter
        }
    )
    assert {k: m.direction.value for k, m in task.metrics.items()} == {  # type: ignore[union-attr]
        "accuracy": "maximize",
        "error": "minimize",
        "score": "maximize",
        "hits": "maximize",
        "top1_error": "minimize",
    }
    assert task.directions["val_score"] is Direction.MAXIMIZE and task.directions["train_loss"] is Direction.MINIMIZE
    assert task.directions["train_top1_error"] is Direction.MINIMIZE
    run = bstune.train(task, bstune.TrainConfig(batch_size=16, lr=0.1, max_samples=64))
    assert run.history[-1].metrics["val_score"] == run.history[-1].metrics["val_accuracy"]  # called like its function


@pytest.mark.parametrize("name", ["score", "top1_error"])
def test_a_plain_metric_whose_name_does_not_settle_it_must_be_declared(name: str) -> None:
    with pytest.raises(TaskError) as info:
        _task({name: accuracy})
    assert info.value.field == "metrics"
    assert f"metric {name!r}" in str(info.value)
    assert "bstune.Metric(fn, direction='maximize')" in str(info.value)


def test_a_bad_declaration_says_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match=r"^Metric: direction: must be 'minimize' or 'maximize', got 'higher'"):
        Metric(accuracy, direction="higher")
    with pytest.raises(ConfigError, match=r"^Metric: fn: must be callable"):
        Metric("accuracy", direction="maximize")  # type: ignore[arg-type]


SPACE = {"name": "s", "batch_size": {"min": 4, "max": 32}, "lr": {"min": 0.01, "max": 1.0}}


def test_a_study_takes_its_objective_direction_and_refuses_a_contradiction() -> None:
    task = _task({"accuracy": Metric(accuracy, direction="maximize")})
    assert bstune.Study(task, SPACE, objective="val_accuracy").direction is Direction.MAXIMIZE
    assert bstune.Study(task, SPACE, objective="val_accuracy", direction="maximize").direction is Direction.MAXIMIZE
    assert bstune.Study(task, SPACE).direction is Direction.MINIMIZE  # val_loss
    with pytest.raises(ConfigError) as info:
        bstune.Study(task, SPACE, objective="val_accuracy", direction="minimize")
    assert (info.value.source, info.value.field) == ("Study", "direction")
    assert "'minimize' contradicts the objective 'val_accuracy', which the task declares 'maximize'" in str(info.value)
    with pytest.raises(ConfigError, match=r"val_loss.*'minimize'"):
        bstune.Study(task, SPACE, direction="maximize")


@pytest.mark.parametrize(
    ("name", "direction"),
    [("val_ppl", "minimize"), ("ppl", "minimize"), ("val_bpc", "minimize"), ("test_wer", "minimize"),
     ("cer", "minimize"), ("concern_score", None), ("apples_eaten", None), ("val_ppl_accuracy", None)],
)  # fmt: skip
def test_short_names_of_minimized_metrics_count_as_whole_words_only(name: str, direction: str | None) -> None:
    """A newcomer's `val_ppl` (perplexity) had no direction, so `bstune report --target-metric val_ppl` refused."""
    found = infer_direction(name)
    assert (found.value if found is not None else None) == direction


@pytest.mark.parametrize("name", ["lossless_ratio", "terror_count", "errorless_fraction"])
def test_a_direction_given_against_a_guess_from_part_of_a_word_stands(name: str, tmp_path: Any) -> None:
    """A name read as minimized for a word inside it ("loss" in lossless_ratio) refused the user's own
    direction='maximize', and left unset it was minimized: no way to run the study the right way round."""
    assert infer_direction(name) is Direction.MINIMIZE and infer_direction(name, whole_words=True) is None

    def train(ctx: bstune.TrialContext) -> None:
        pass

    space = SPACE | {"batch_size": {"min": 4, "max": 32}}
    assert bstune.Study(train, space, objective=name, direction="maximize").direction is Direction.MAXIMIZE
    with pytest.raises(ConfigError, match="'minimize' contradicts the objective 'val_accuracy', whose name says"):
        bstune.Study(train, space, objective="val_accuracy", direction="minimize")


def test_a_change_of_a_measure_says_no_direction() -> None:
    assert infer_direction("accuracy_change") is None and infer_direction("val_loss_change") is None
