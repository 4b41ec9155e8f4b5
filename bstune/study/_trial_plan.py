"""What one trial trains: a sampler's draws turned into a training configuration.

:class:`TrialPlanner` asks the sampler (an Optuna trial, or Ray Tune's wrapper of one) for
the prior's fixed-range coordinates, or plain (B, eta) in the baseline mode, and derives
the batch size, learning rate and temperature as a :class:`TrialPlan`. Both backends
plan through it, and :func:`~bstune.study._trial.run_trial` trains the plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from bstune.errors import ConfigError
from bstune.optim import temperature
from bstune.space import MODEL_PREFIX, SearchSpace
from bstune.study._prior import Prior
from bstune.study._prior_sampler import PriorSampler
from bstune.study._records import clean_json
from bstune.training import TrainConfig

if TYPE_CHECKING:
    import optuna

__all__ = ["Suggester", "TrialPlan", "TrialPlanner", "split_params"]


def split_params(params: Mapping[str, Any], budget_samples: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A space's extra hyperparameters as ``(TrainConfig keywords, model-factory keywords)``.

    ``model.<kwarg>`` goes to the model factory; ``warmup_fraction`` becomes
    ``warmup_samples``, that fraction of ``budget_samples``; the rest are TrainConfig settings.
    A study's trials and ``bstune train --param`` both go through here.

    Example:
        >>> split_params({"momentum": 0.9, "warmup_fraction": 0.1, "model.hidden": 64}, 1000)
        ({'momentum': 0.9, 'warmup_samples': 100}, {'hidden': 64})
    """
    model_kwargs = {k.removeprefix(MODEL_PREFIX): v for k, v in params.items() if k.startswith(MODEL_PREFIX)}
    train_kwargs = {k: v for k, v in params.items() if not k.startswith(MODEL_PREFIX)}
    warmup = train_kwargs.pop("warmup_fraction", None)
    if warmup is not None:
        train_kwargs["warmup_samples"] = int(warmup * budget_samples)
    return train_kwargs, model_kwargs


class Suggester(Protocol):
    """The part of an Optuna trial a planner uses (Ray Tune's wrapper has it too)."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int: ...
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class TrialPlan:
    """What one trial trains: the sampled coordinates and the configuration derived from them."""

    params: dict[str, Any]
    config: TrainConfig
    model_kwargs: dict[str, Any]
    temperature: float
    data_parallel: int = 1  # processes (devices) the trial trains on: DDP when more than one
    devices: tuple[str, ...] = ()  # their devices; () with data_parallel > 1: cuda:0.. or the CPU, where it runs
    # "batch_size" and/or "lr" where the space leaves them one value: a loop that hard-codes it applies the trial's
    fixed: tuple[str, ...] = ()

    def on_devices(self, devices: tuple[str, ...]) -> TrialPlan:
        """This plan trained on ``devices`` instead (a worker's): the first, or all of them data-parallel."""
        config = replace(self.config, device=devices[0])
        return replace(self, config=config, devices=devices if self.data_parallel > 1 else ())

    def attrs(self) -> dict[str, Any]:
        """The fields a store keeps about the plan (JSON-safe)."""
        return {
            "batch_size": self.config.batch_size,
            "lr": self.config.lr,
            "temperature": self.temperature,
            "config": clean_json(self.config.to_dict() | {"model_kwargs": self.model_kwargs}),
        }

    def to_dict(self) -> dict[str, Any]:
        out = {"params": clean_json(self.params), **self.attrs()}
        if self.data_parallel > 1:
            out |= {"data_parallel": self.data_parallel, "devices": list(self.devices)}
        if self.fixed:
            out["fixed"] = list(self.fixed)
        return out

    def params_for_user(self) -> dict[str, Any]:
        """What a trial function sees as ``ctx.config``: the space's parameters by name (the prior's
        coordinates left out), the batch size and learning rate they gave."""
        out = {k: v for k, v in self.params.items() if k not in ("batch_coord", "lr_coord")}
        return out | {"batch_size": self.config.batch_size, "lr": self.config.lr}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialPlan:
        config = dict(data["config"])
        model_kwargs = dict(config.pop("model_kwargs", {}))
        return cls(
            params=dict(data["params"]),
            config=TrainConfig.from_dict(config, source="trial plan"),
            model_kwargs=model_kwargs,
            temperature=float(data["temperature"]),
            data_parallel=int(data.get("data_parallel", 1)),
            devices=tuple(data.get("devices", ())),
            fixed=tuple(data.get("fixed", ())),
        )


@dataclass
class TrialPlanner:
    """Draws trials from a space: prior coordinates (mode ``"prior"``) or log-uniform (B, eta).

    Holds only plain data, so it pickles, and a copy can travel with a Ray searcher.
    ``batch_cap`` is lowered when a trial runs out of memory.
    """

    space: SearchSpace
    mode: Literal["prior", "baseline"]
    prior: Prior | None
    batch_cap: int
    budget_samples: int
    eval_every: int
    seed: int
    device: str
    default_momentum: float
    num_workers: int = 0  # the trials' DataLoader workers (StudySettings.num_workers)
    data_parallel: int = 1  # processes per trial (StudySettings.devices_per_trial)
    trial_devices: tuple[str, ...] = ()  # a data-parallel trial's devices; (): chosen where it runs

    def sample(self, trial: Suggester) -> dict[str, Any]:
        """Ask ``trial`` for every coordinate of one trial; returns them by name."""
        params: dict[str, Any] = {}
        for spec in self.space.params:
            if spec.kind == "categorical":
                params[spec.name] = trial.suggest_categorical(spec.name, list(spec.choices or ()))
            elif spec.kind == "int":
                params[spec.name] = trial.suggest_int(spec.name, int(spec.low or 0), int(spec.high or 0), log=spec.log)
            else:
                params[spec.name] = trial.suggest_float(
                    spec.name, float(spec.low or 0), float(spec.high or 0), log=spec.log
                )
        if self.mode == "prior":
            for name, (low, high) in self.prior_coordinates().items():
                params[name] = trial.suggest_float(name, low, high)
        else:
            params["batch_size"] = trial.suggest_int("batch_size", self.space.batch_min, self.batch_cap, log=True)
            params["lr"] = trial.suggest_float("lr", self.space.lr_min, self.space.lr_max, log=True)
        return params

    def prior_coordinates(self) -> dict[str, tuple[float, float]]:
        """The ranges ``sample`` draws the prior's coordinates from (the prior mode)."""
        assert self.prior is not None, "prior mode needs a prior (run the probe first)"
        return {"batch_coord": (0.0, 1.0), "lr_coord": self.prior.v_range}

    def plan_at(self, batch_size: int, lr: float) -> TrialPlan | None:
        """The plan of a trial drawn at the prior's coordinates of (``batch_size``, ``lr``), when it would
        train exactly that (a space with no other parameters); None when no draw would."""
        if self.mode != "prior" or self.prior is None or self.space.params or batch_size > self.batch_cap:
            return None
        v = math.log(lr / self.prior.lr_rule(batch_size))
        v_low, v_high = self.prior.v_range
        if not v_low <= v <= v_high:
            return None
        plan = self.plan({"batch_coord": self.prior.coord_of(batch_size), "lr_coord": v})
        if plan.config.batch_size != batch_size or not math.isclose(plan.config.lr, lr, rel_tol=1e-9):
            return None  # rounded to another batch size, or clipped to the space's lr range
        return plan

    def plan(self, params: dict[str, Any]) -> TrialPlan:
        """Derive batch size, learning rate and the rest of the configuration from ``params``."""
        extras = {spec.name: params[spec.name] for spec in self.space.params}
        momentum = extras.get("momentum")
        if self.mode == "prior":
            assert self.prior is not None
            batch = min(self.prior.batch_at(params["batch_coord"]), self.batch_cap)
            lr = self.prior.lr_at(batch, params["lr_coord"], momentum)
        else:
            batch = min(int(params["batch_size"]), self.batch_cap)
            lr = float(params["lr"])
        train_kwargs, model_kwargs = split_params(extras, self.budget_samples)
        config = TrainConfig(
            batch_size=batch,
            lr=lr,
            max_samples=self.budget_samples,
            eval_every_samples=self.eval_every,
            seed=self.seed,
            device=self.trial_devices[0] if self.trial_devices else self.device,
            num_workers=self.num_workers,
            **train_kwargs,
        )
        m = config.momentum if config.momentum is not None else self.default_momentum
        devices = self.trial_devices if self.data_parallel > 1 else ()
        temp = temperature(config.lr, config.batch_size, m)
        fixed = tuple(sorted(self.space.fixed))
        return TrialPlan(dict(params), config, model_kwargs, temp, self.data_parallel, devices, fixed)

    def sampler(self, inner: optuna.samplers.BaseSampler) -> optuna.samplers.BaseSampler:
        """The sampler to draw this study's trials with: in the prior mode, ``inner`` with the prior's
        draws mixed in (:class:`~bstune.study._prior_sampler.PriorSampler`); else ``inner`` itself."""
        if self.mode != "prior" or self.prior is None or isinstance(inner, PriorSampler):
            return inner
        return PriorSampler(inner, self.prior, self.seed)

    def learn_oom(self, batch_size: int) -> int:
        """A trial ran out of memory at ``batch_size``: cap later trials below it; returns the new cap."""
        self.batch_cap = max(self.space.batch_min, min(self.batch_cap, batch_size // 2))
        return self.batch_cap

    def learn_data_size(self, n_examples: int) -> int:
        """A trial's training set has ``n_examples``: cap later trials there; returns the new cap.

        Raises:
            ConfigError: the space's smallest batch size is larger than that training set.
        """
        if n_examples < self.space.batch_min:
            raise ConfigError(
                f"batch_size.min ({self.space.batch_min}) is larger than the training set ({n_examples} examples)",
                source=self.space.source,
                field="batch_size.min",
            )
        self.batch_cap = min(self.batch_cap, n_examples)
        return self.batch_cap
