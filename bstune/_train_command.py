"""``bstune train``: one training run of a script, at settings from a study's recommended config
(``--config``), ``--param NAME=VALUE`` and the explicit options, each overriding the one before."""

from __future__ import annotations

import argparse
import json
import logging
import math
import traceback
from pathlib import Path
from typing import Any

from bstune._command_io import writable_out, write_json
from bstune._loading import load_task
from bstune._validate import check_count
from bstune.errors import ConfigError, UserCodeError

__all__ = ["cmd_train"]

logger = logging.getLogger("bstune.cli")


_FILE_SETTINGS = ("batch_size", "lr", "warmup_samples")  # TrainConfig settings a recommended config holds


_OPTIMIZER_KEYS = ("optimizer", "betas")


def _study_eval_every(data: dict[str, Any]) -> int | None:
    """The samples between a study's evaluations, as its trials ran (report.json and result.json list them)."""
    for trial in data.get("trials") or []:
        every = (trial.get("config") or {}).get("eval_every_samples") if isinstance(trial, dict) else None
        if isinstance(every, int) and every > 0:
            return every
    return None


def _config_file(path: str) -> Any:
    """``--config``'s file (a study's report.json or result.json) as JSON, read once for everything taken from it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError("no such file", source=path) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"unreadable: {type(exc).__name__}: {exc}", source=path) from None


def _recommended_config(data: Any, path: str) -> tuple[dict[str, Any], int | None]:
    """The recommended config of a study and its budget in samples, from report.json or result.json."""
    if isinstance(data, dict) and isinstance(data.get("recommended"), dict):  # report.json
        study = data.get("study")
        return dict(data["recommended"]), study.get("budget_samples") if isinstance(study, dict) else None
    if isinstance(data, dict) and isinstance(data.get("best_config"), dict):  # result.json
        return dict(data["best_config"]), data.get("budget_samples")
    raise ConfigError(
        "holds no recommended config: neither 'recommended' (as report.json has) nor 'best_config' (result.json)",
        source=path,
    )


def _check_same_training_set(task: Any, data: dict[str, Any], path: str) -> None:
    """Warn where the study behind ``--config`` (``data``, read from ``path``) trained on another number of
    examples than this script's task: most likely the config of another script's study, whose batch size and
    rate need not suit this one."""
    if isinstance(data.get("recommended"), dict):  # report.json: the size its report gave
        n_train = (data.get("study") or {}).get("n_train")
    else:  # result.json: the probe's, else the largest a training function's trial saw (as the report takes it)
        sizes = [t.get("n_train") for t in data.get("trials") or [] if isinstance(t, dict)]
        n_train = (data.get("probe") or {}).get("n_train") or max(
            (n for n in sizes if isinstance(n, int)), default=None
        )
    if isinstance(n_train, int) and n_train != task.n_train:
        logger.warning(
            "%s comes from a study whose training set had %s examples; this script's task has %s: is it the config "
            "of this script's study? Its batch size and learning rate were tuned for that training set",
            path,
            f"{n_train:,}",
            f"{task.n_train:,}",
        )


def _parse_value(text: str) -> Any:
    """``64`` -> 64, ``0.95`` / ``1e-3`` -> float, ``true``/``false`` -> bool, anything else the string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.lower() == "true" if text.lower() in ("true", "false") else text


def _check_param(name: str, value: Any, source: str) -> None:
    """A hyperparameter as a search space could set it (a known setting or ``model.<kwarg>``), with a valid value."""
    from bstune.space import ParamSpec

    try:
        ParamSpec(name, "categorical", choices=(value,))
    except ConfigError as exc:
        raise ConfigError(exc.reason, source=source, field=str(name)) from None


def _train_settings(
    args: argparse.Namespace, data: Any
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], int | None]:
    """From --config (its file's JSON, ``data``), then --param, then the explicit options (each overriding the
    one before): TrainConfig settings, space-style parameters, optimizer settings and the file's budget."""
    settings: dict[str, Any] = {}
    params: dict[str, Any] = {}
    optimizer: dict[str, Any] = {}
    budget = None
    if args.config is not None:
        from bstune.report import RECOMMENDATION_NOTES

        config, budget = _recommended_config(data, args.config)
        for key, value in config.items():
            if key in RECOMMENDATION_NOTES:
                continue
            if key in _OPTIMIZER_KEYS:
                optimizer[key] = value
            elif key in _FILE_SETTINGS:
                if key == "warmup_samples":
                    check_count(value, source=args.config, field=key, minimum=0)
                settings[key] = value
            else:
                _check_param(key, value, source=args.config)
                params[key] = value
    for text in args.param or []:
        name, sep, raw = text.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"expected NAME=VALUE, got {text!r}", source="--param")
        value = _parse_value(raw.strip())
        _check_param(name.strip(), value, source="--param")
        params[name.strip()] = value
    explicit = {
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "warmup_samples": args.warmup_samples,
        "schedule": args.schedule,
    }
    for key, value in explicit.items():
        if value is not None:
            settings[key] = value
            params.pop(key, None)
    return settings, params, optimizer, budget


def _with_optimizer(task: Any, optimizer: dict[str, Any], source: str) -> Any:
    """``task`` training with the recommended optimizer family and betas (a study's space may replace the task's)."""
    import dataclasses

    from bstune.optim import OptimizerSpec

    if not optimizer:
        return task
    spec = task.optimizer_spec
    family = optimizer.get("optimizer", spec.family)
    try:
        low, high = (float(b) for b in optimizer.get("betas", spec.betas))
        betas = (low, high)
    except (TypeError, ValueError):
        raise ConfigError(f"must be two numbers, got {optimizer['betas']!r}", source=source, field="betas") from None
    new = dataclasses.replace(spec, betas=betas) if family == spec.family else OptimizerSpec(family=family, betas=betas)
    return dataclasses.replace(task, optimizer=new, validate=False)


def cmd_train(args: argparse.Namespace) -> int:
    import bstune
    from bstune.study import build_model, split_params

    writable_out(args.out)  # before the training, not after it
    data: dict[str, Any] = _config_file(args.config) if args.config is not None else {}
    settings, params, optimizer, budget = _train_settings(args, data)
    for key, option in (("batch_size", "--batch-size"), ("lr", "--lr")):
        if key not in settings:
            raise ConfigError("needed (or --config FILE, a study's report.json or result.json)", source=option)
    max_samples = args.max_samples or budget
    if args.eval_every is None and args.config is not None and max_samples == budget:
        # the study's evaluations: the run's curve is then comparable with its trials' point by point
        args.eval_every = _study_eval_every(data)
    if max_samples is None:
        raise ConfigError(
            "needed: the training budget in samples (--config FILE gives its study's)", source="--max-samples"
        )
    warmup = settings.get("warmup_samples") or 0
    if budget and max_samples != budget and warmup and args.warmup_samples is None:
        logger.warning(
            "warmup_samples=%d was chosen for the study's budget of %s samples (%.0f%% of it); at --max-samples %s "
            "it is %.0f%%: give --warmup-samples %d to keep the share",
            warmup,
            f"{budget:,}",
            100 * warmup / budget,
            f"{max_samples:,}",
            100 * warmup / max_samples,
            round(warmup * max_samples / budget),
        )
    task = _with_optimizer(load_task(args.script, command="bstune train"), optimizer, args.config)
    if args.config is not None:
        _check_same_training_set(task, data, args.config)
    train_kwargs, model_kwargs = split_params(params, max_samples)  # as a study's trial splits its parameters
    cfg = bstune.TrainConfig(
        **(settings | train_kwargs),
        max_samples=max_samples,
        eval_every_samples=args.eval_every,
        seed=args.seed,
        device=args.device,
        num_workers=args.num_workers,
        micro_batch_size=args.micro_batch_size,
        amp=args.amp,
        track_noise=args.track_noise,
    )
    model = build_model(task, cfg, model_kwargs)
    shown = [f"{k}={v}" for k, v in cfg.to_dict().items() if k in ("batch_size", "lr", "max_samples")]
    shown += [f"{k}={v}" for k, v in (settings | train_kwargs).items() if k not in ("batch_size", "lr")]
    shown += [f"model.{k}={v}" for k, v in model_kwargs.items()]
    spec = task.optimizer_spec
    fixed = (
        f" (momentum {cfg.momentum if cfg.momentum is not None else spec.momentum:g})"
        if spec.family == "sgd"
        else (f" (betas {spec.betas[0]:g}, {spec.betas[1]:g})")
    )
    print(f"optimizer {spec.family}{fixed}: " + " ".join(shown))
    try:
        run = bstune.train(task, cfg, model=model)
    except bstune.BstuneError:
        raise
    except Exception as exc:  # the task's code raised: one line here, the traceback with -v
        raise UserCodeError(
            f"the training run failed in the task's code: {type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
        ) from exc
    metrics = sorted(run.history[-1].metrics) if run.history else []
    print(
        f"{'samples':>10} {'train_loss':>11} {'val_loss':>9} {'gap':>8}"
        + "".join(f" {m:>{max(9, len(m))}}" for m in metrics)
        + f"  {'B_simple (90% CI)':<28}"
    )
    for r in run.history:
        noise = f"{r.noise.b_simple:.4g} ({r.noise.ci[0]:.3g} .. {r.noise.ci[1]:.3g})" if r.noise else ""
        values = "".join(f" {r.metrics.get(m, math.nan):>{max(9, len(m))}.4f}" for m in metrics)
        print(f"{r.samples:>10} {r.train_loss:>11.4f} {r.val_loss:>9.4f} {r.gap:>8.4f}{values}  {noise:<28}")
    if run.final is not None:
        last = {"train_loss": run.final.train_loss, "val_loss": run.final.val_loss, **run.final.metrics}
        print("final: " + "  ".join(f"{k} {v:.4g}" for k, v in last.items()))
    print(
        f"status: {run.status.value}  steps: {run.steps}  samples: {run.samples}  "
        f"throughput: {run.throughput:.0f} samples/s  {run.message}"
    )
    write_json(args.out, "train.json", run.to_dict() | {"model_kwargs": model_kwargs})
    return 0 if run.status is bstune.RunStatus.COMPLETED else 1
