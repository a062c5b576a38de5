"""Engine settings: bamboo's Django settings as one dataclass, and the process-wide defaults.

bamboo reads ``PIPELINE_EXCLUSIVE_GATEWAY_STRATEGY`` and its kin from the Django settings of every
process, the workers' included. culm's equivalent is the process's default :class:`Settings`: what
:func:`configure` set (a module of ``$CULM_IMPORTS`` calling it reaches every ``culm worker`` and
every embedded runtime, which import those modules), else the ``CULM_*`` environment variables of
:data:`ENV`, else the defaults below. A runtime given ``settings=`` uses those instead.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from culm.errors import SettingsError

GATEWAY_STRATEGY_ONLY = 1
GATEWAY_STRATEGY_FIRST = 2


@dataclass
class Settings:
    """Engine settings (bamboo's names in comments). A bad value raises :class:`SettingsError`."""

    rerun_limit: int = 100  # BAMBOO_DJANGO_ERI_NODE_RERUN_LIMIT
    gateway_strategy: int = GATEWAY_STRATEGY_ONLY  # PIPELINE_EXCLUSIVE_GATEWAY_STRATEGY
    # PIPELINE_EXCLUSIVE_GATEWAY_EXPR_FUNC(expr, context, extra_info) -> bool; None = boolrule
    expr_func: Callable[..., bool] | None = None
    lease_seconds: float = 60.0
    schedule_lock_seconds: float = 60.0
    render_nested_objects: bool = False  # ENABLE_RENDER_OBJ_BY_MAKO_STRING

    def __post_init__(self) -> None:
        for problem in _problems(self):
            raise SettingsError(problem)


def _problems(s: Settings) -> list[str]:
    found = []
    if type(s.rerun_limit) is not int or s.rerun_limit < 0:
        found.append(f"Settings.rerun_limit must be an integer >= 0, got {s.rerun_limit!r}")
    if (
        s.gateway_strategy not in (GATEWAY_STRATEGY_ONLY, GATEWAY_STRATEGY_FIRST)
        or type(s.gateway_strategy) is bool
    ):
        found.append(
            f"Settings.gateway_strategy must be {GATEWAY_STRATEGY_ONLY} (ONLY) or {GATEWAY_STRATEGY_FIRST} "
            f"(FIRST), as bamboo's PIPELINE_EXCLUSIVE_GATEWAY_STRATEGY; got {s.gateway_strategy!r}"
        )
    if s.expr_func is not None and not callable(s.expr_func):
        found.append(
            f"Settings.expr_func must be a function (expr, context, extra_info) -> bool or None, "
            f"got {s.expr_func!r}"
        )
    if type(s.render_nested_objects) is not bool:
        found.append(f"Settings.render_nested_objects must be True or False, got {s.render_nested_objects!r}")
    for name in ("lease_seconds", "schedule_lock_seconds"):
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            found.append(f"Settings.{name} must be a number of seconds above 0, got {value!r}")
    return found


# The settings a process's workers and default runtimes read, and the variables they start from.
ENV = {
    "rerun_limit": "CULM_RERUN_LIMIT",
    "gateway_strategy": "CULM_GATEWAY_STRATEGY",
    "expr_func": "CULM_EXPR_FUNC",
    "render_nested_objects": "CULM_RENDER_NESTED_OBJECTS",
}
_STRATEGIES = {
    "only": GATEWAY_STRATEGY_ONLY,
    "1": GATEWAY_STRATEGY_ONLY,
    "first": GATEWAY_STRATEGY_FIRST,
    "2": GATEWAY_STRATEGY_FIRST,
}
_BOOLS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}

_lock = threading.RLock()
_building = threading.local()  # on while this thread reads the environment (imports $CULM_EXPR_FUNC's module)
_process: Settings | None = None


def process_settings() -> Settings:
    """The process's default settings, read from the environment the first time. A runtime or worker
    created without ``settings=`` takes a copy of them as they are then.

    Raises:
        SettingsError: a ``CULM_*`` variable of :data:`ENV` holds a value culm cannot use.
    """
    global _process
    with _lock:
        if _process is not None:
            return _process
        if getattr(_building, "on", False):
            # The module $CULM_EXPR_FUNC names calls culm.configure as it is imported (it waited
            # for itself on the lock for ever before): its settings start from the other
            # variables, and the function joins them once its import is done, unless configured.
            _process = Settings(**_from_env(os.environ, but=("expr_func",)))
            return _process
        _building.on = True
        try:
            values = _from_env(os.environ)
        finally:
            _building.on = False
        if _process is None:
            _process = Settings(**values)
        elif "expr_func" in values and _process.expr_func is None:
            _process.expr_func = values["expr_func"]
        return _process


def configure(**changes: Any) -> dict[str, Any]:
    """Change the process's default settings, as bamboo's Django settings are set for every process:
    call it in a module of ``$CULM_IMPORTS`` (``culm worker`` and embedded runtimes import them) so
    that the workers evaluate gateways and render templates as the code expects. Runtimes created
    before the call keep the settings they were created with, as do those given ``settings=`` and
    one created after it on the same SQLite file as a runtime still open from before (it shares
    that runtime's engine).

    Returns:
        The previous values of the settings changed (``configure(**previous)`` restores them).

    Raises:
        SettingsError: an unknown name or a bad value (nothing is changed then).
    """
    current = process_settings()
    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise SettingsError(
            f"culm.configure: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    checked = dataclasses.replace(current, **changes)  # raises SettingsError on a bad value
    with _lock:
        previous = {name: getattr(current, name) for name in changes}
        for name in changes:
            setattr(current, name, getattr(checked, name))
    return previous


def _from_env(env: Any, but: tuple[str, ...] = ()) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field, var in ENV.items():
        raw = (env.get(var) or "").strip() if field not in but else ""
        if raw:
            values[field] = _parse(field, var, raw)
    return values


def _parse(field: str, var: str, raw: str) -> Any:
    if field == "rerun_limit":
        if not raw.isdigit():
            raise SettingsError(f"${var} must be an integer >= 0, got {raw!r}")
        return int(raw)
    if field == "gateway_strategy":
        if raw.lower() not in _STRATEGIES:
            raise SettingsError(f"${var} must be 'only' (1) or 'first' (2), got {raw!r}")
        return _STRATEGIES[raw.lower()]
    if field == "render_nested_objects":
        if raw.lower() not in _BOOLS:
            raise SettingsError(f"${var} must be 1/true/yes/on or 0/false/no/off, got {raw!r}")
        return _BOOLS[raw.lower()]
    return _function(var, raw)


def _function(var: str, raw: str) -> Callable[..., bool]:
    """``module:function`` (or ``module.function``) named by ``$var``, imported."""
    module_name, sep, attr = raw.partition(":")
    if not sep:
        module_name, _, attr = raw.rpartition(".")
    if not module_name or not attr:
        raise SettingsError(f"${var} must name a function as module:function, got {raw!r}")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SettingsError(f"${var}={raw!r}: cannot import it ({type(exc).__name__}: {exc})") from exc
    if not callable(func):
        raise SettingsError(f"${var}={raw!r} is not a function")
    return func  # type: ignore[no-any-return]
