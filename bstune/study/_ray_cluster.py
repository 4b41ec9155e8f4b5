"""Joining a Ray cluster: where and how a study runs (:class:`RaySettings`), the import, the
connection (a quick check of the address, Ray 2.60's token authentication) and a trial's
resources. :mod:`bstune.study._ray` runs the trials on it with Ray Tune.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from bstune._keys import SCRIPT_MODULE_PREFIX
from bstune._validate import count_reason, number_reason
from bstune.errors import ConfigError, DependencyError

__all__ = ["RaySettings", "import_ray", "unreachable", "use_auth_token"]

logger = logging.getLogger("bstune.study._ray")  # the name users' log filters already know


def import_ray() -> Any:
    """Import Ray (with Tune), or say which extra installs it."""
    try:
        import ray
        import ray.tune
    except ImportError as exc:
        raise DependencyError(
            f"the Ray backend needs Ray Tune ({exc}); install it with: pip install 'bstune[ray]'"
        ) from exc
    return ray


@dataclass(frozen=True)
class RaySettings:
    """Where and how a study runs on Ray.

    Args:
        address: the cluster to join (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``);
            ``None`` does as Ray does: ``RAY_ADDRESS``, else the cluster ``ray start`` started on
            this machine, else a new local Ray instance; ``"local"`` always starts a new one.
        resources_per_trial: e.g. ``{"gpu": 1}`` or ``{"cpu": 2}``; default one GPU per
            trial when the cluster has GPUs, else one CPU.
        max_concurrent: trials at once; default as many as the resources allow.
        storage_path: folder (shared by all nodes on a multi-node cluster, e.g. NFS) or
            cloud URI where results and checkpoints live; default ``~/ray_results``.
        max_failures: retries of a trial whose worker died (not of one whose code raised).
    """

    address: str | None = None
    resources_per_trial: Mapping[str, float] | None = None
    max_concurrent: int | None = None
    storage_path: str | None = None
    max_failures: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(name: str, reason: str) -> ConfigError:
            return ConfigError(reason, source="Study", field=name)

        if self.resources_per_trial is not None:
            unknown = sorted(set(self.resources_per_trial) - {"cpu", "gpu", "memory"})
            if unknown:
                raise bad("resources_per_trial", f"unknown resources {unknown}; use cpu, gpu and memory")
            for name, amount in self.resources_per_trial.items():
                if (reason := number_reason(amount, strict=False)) is not None:
                    raise bad(f"resources_per_trial.{name}", reason)
        if self.max_concurrent is not None and (reason := count_reason(self.max_concurrent)) is not None:
            raise bad("max_concurrent", reason)
        if (reason := count_reason(self.max_failures, minimum=0)) is not None:
            raise bad("max_failures", reason)

    def experiment_dir(self, study_name: str) -> Path:
        root = Path(self.storage_path).expanduser() if self.storage_path else Path("~/ray_results").expanduser()
        return root.absolute() / study_name


def _resources(ray: Any, settings: RaySettings, devices_per_trial: int = 1) -> dict[str, float]:
    """A trial's resources: ``resources_per_trial``, else one GPU (or CPU) per device of the trial."""
    if settings.resources_per_trial is not None:
        wanted = dict(settings.resources_per_trial)
        have = ray.cluster_resources()
        short = [key for key, amount in wanted.items() if amount > float(have.get(_ray_name(key), 0.0))]
        if short:  # Ray would hold the probe and every trial pending without a word
            logger.warning(
                "each trial asks for %s, and the whole cluster has %s now: the probe and the trials wait until "
                "nodes with enough join (an autoscaler may add them); without one, lower --resources",
                ", ".join(f"{k}={v:g}" for k, v in wanted.items()),
                ", ".join(f"{k}={float(have.get(_ray_name(k), 0.0)):g}" for k in short),
            )
        return wanted
    k = devices_per_trial
    gpus = float(ray.cluster_resources().get("GPU", 0))
    return {"cpu": k, "gpu": k} if gpus >= 1 else {"cpu": k}


def _ray_name(key: str) -> str:
    """Ray's name of a resource given as ``--resources`` names it: CPU and GPU upper case, others as given."""
    return key.upper() if key in ("cpu", "gpu") else key


def _trials_at_once(ray: Any, settings: RaySettings, resources: Mapping[str, float]) -> int:
    """How many trials the cluster runs at once: ``max_concurrent``, else what its resources fit now."""
    if settings.max_concurrent is not None:
        return settings.max_concurrent
    have = ray.cluster_resources()
    fits = [have.get(key.upper(), 0.0) / amount for key, amount in resources.items() if key != "memory" and amount > 0]
    return max(1, int(min(fits))) if fits else 1


_BY_VALUE: set[str] = set()  # the modules whose functions Ray ships by value (_register_script_modules)


def _register_script_modules() -> None:
    """Ship functions defined in a script loaded by :func:`bstune._loading.load_task` by value.

    Such a module exists only in the driver; workers could not import it by name. cloudpickle
    ships its functions and classes by value, but a ``functools.cache`` (``lru_cache``) wrapper
    by reference, as the module's attribute: a script that loads its data once through one
    failed every trial with "No module named 'bstune_user_...'". Such a wrapper is shipped as
    its function, wrapped again where it is unpickled (with an empty cache, as a new process has).
    """
    from ray import cloudpickle

    for module in _script_modules():
        cloudpickle.register_pickle_by_value(module)
        _BY_VALUE.add(module.__name__)
    # cloudpickle's own table (its reducers first, copyreg's after): the standard pickler keeps its way
    cloudpickle.Pickler.dispatch_table[functools._lru_cache_wrapper] = _reduce_cache


def _script_modules() -> list[ModuleType]:
    """The scripts loaded, and the modules they imported from their folders (``from my_data import load``,
    found through the folder the loader put on ``sys.path``): a worker on another node has neither.

    A module counts as found there when its top-level name is a file (``my_data.py``) or package folder
    (``my_pkg/``) directly in a script's folder: an interpreter or a virtual environment that lives under
    that folder (``~/.pyenv``, ``/usr/local`` under ``/``) holds the standard library and installed
    packages, which workers import themselves and stay shipped by reference, as bstune does.
    """
    modules = list(sys.modules.values())
    scripts = [m for m in modules if getattr(m, "__name__", "").startswith(SCRIPT_MODULE_PREFIX)]
    folders = {Path(str(m.__file__)).resolve().parent for m in scripts if getattr(m, "__file__", None)}
    own = Path(__file__).resolve().parents[1]  # bstune's package folder
    beside = []
    for module in modules:
        file = getattr(module, "__file__", None)
        name = getattr(module, "__name__", "")
        if module in scripts or not file or not folders or not isinstance(name, str):
            continue
        path, top = Path(file).resolve(), name.split(".")[0]
        if path.is_relative_to(own):
            continue
        for folder in folders:
            if path.is_relative_to(folder):
                first = path.relative_to(folder).parts[0]
                if first in (top, f"{top}.py"):
                    beside.append(module)
                    break
    return scripts + beside


def _reduce_cache(wrapper: Any) -> Any:
    """How pickle ships an ``lru_cache`` wrapper: a script's as its function and cache settings, any
    other as before (by reference, its module importable where it is unpickled)."""
    if str(getattr(wrapper, "__module__", "")) in _BY_VALUE:
        settings = wrapper.cache_parameters()
        return _cached, (wrapper.__wrapped__, settings["maxsize"], settings["typed"])
    return wrapper.__reduce__()


def _cached(fn: Callable[..., Any], maxsize: int | None, typed: bool) -> ShippedCache:
    """A script's cached function, unpickled: ``fn`` cached again (:class:`ShippedCache`)."""
    return ShippedCache(fn, maxsize, typed)


class ShippedCache:
    """A script's ``functools.lru_cache`` function after a trip through pickle: ``fn`` in a new cache
    (empty, as a new process's is), which pickles as its function again.

    A plain ``lru_cache`` wrapper pickles by reference to its module, which exists only in the driver.
    Where the one process that unpickled it pickles it again without bstune's reducer (Ray Client's
    server does, passing the function on to the workers), that failed: "Can't pickle
    <functools._lru_cache_wrapper>: import of module 'bstune_user_...' failed".
    """

    def __init__(self, fn: Callable[..., Any], maxsize: int | None, typed: bool) -> None:
        self._cache = functools.lru_cache(maxsize=maxsize, typed=typed)(fn)
        self._settings = (fn, maxsize, typed)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._cache(*args, **kwargs)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:  # a cached method binds its instance, as lru_cache's does
        return self if obj is None else types.MethodType(self, obj)

    def cache_info(self) -> Any:
        return self._cache.cache_info()

    def cache_clear(self) -> None:
        self._cache.cache_clear()

    def cache_parameters(self) -> dict[str, Any]:
        return dict(self._cache.cache_parameters())

    def __reduce__(self) -> tuple[Any, ...]:
        return _cached, self._settings


def unreachable(address: str | None) -> str | None:
    """Why nothing answers at ``address`` (``host:port`` or ``ray://host:port``), or None: it answers, or
    it names no port (``"auto"``, a local instance), and Ray says what it makes of it.

    Ray itself retries an address where nothing listens for minutes, warning each time.

    Example:
        >>> unreachable("auto") is None and unreachable(None) is None  # no port to try: Ray's to read
        True
    """
    if not address or "://" in address.removeprefix("ray://"):
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            return None
    except OSError as exc:
        return f"nothing answers at {host}:{port} ({exc.strerror or exc})"


def _token_path() -> Path | None:
    """This user's Ray authentication token, where there is one (``RAY_AUTH_TOKEN`` gives it inline)."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token").expanduser()
    return path if path.is_file() else None


def use_auth_token(address: str | None) -> None:
    """Send this user's Ray authentication token to a running cluster, where there is one; before Ray
    is imported, which reads ``RAY_AUTH_MODE`` once.

    ``ray start`` (Ray 2.60) turns token authentication on when a token exists
    (``~/.ray/auth_token``, or ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``), but
    ``ray.init(address=...)`` sends it only with ``RAY_AUTH_MODE=token``: without it, the
    driver retries "Authentication token is missing or incorrect" and gives up. A token
    sent to a cluster without authentication is ignored. A mode the user set is kept. No
    address with ``RAY_ADDRESS`` set is that address, as ``ray.init`` reads it.
    """
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local") or "RAY_AUTH_MODE" in os.environ or "ray" in sys.modules:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or _token_path() is not None:
        os.environ["RAY_AUTH_MODE"] = "token"
        logger.info("sending this user's Ray authentication token to the cluster (RAY_AUTH_MODE=token)")


def _init(ray: Any, settings: RaySettings) -> None:
    if ray.is_initialized():
        return
    from_env = settings.address is None and bool(os.environ.get("RAY_ADDRESS"))
    if (reason := unreachable(settings.address or os.environ.get("RAY_ADDRESS"))) is not None:
        raise ConfigError(
            f"cannot connect to a Ray cluster: {reason}"
            + (" (the address RAY_ADDRESS gives)" if from_env else "")
            + "; start one (ray start --head) and give the address it prints, or leave the address out "
            + ("and unset RAY_ADDRESS " if from_env else "")
            + "to start a local Ray instance",
            source="Study",
            field="address",
        )
    kwargs: dict[str, Any] = {"address": settings.address, "log_to_driver": False, **settings.extra}
    if settings.address in (None, "local"):  # a new local instance (or the one on this machine): no dashboard
        kwargs["include_dashboard"] = False
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = ""
        if os.environ.get("RAY_AUTH_MODE") != "token" and (os.environ.get("RAY_AUTH_TOKEN") or _token_path()):
            hint = (
                "; if the cluster uses token authentication (ray start turns it on where ~/.ray/auth_token "
                "exists), set RAY_AUTH_MODE=token before Ray is imported"
            )
        raise ConfigError(f"cannot connect to a Ray cluster: {exc}{hint}", source="Study", field="address") from exc
