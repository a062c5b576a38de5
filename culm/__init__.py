"""culm: a durable, event-driven workflow engine, API-compatible with bamboo-engine.

The public face of the package. Engine API functions live in :mod:`culm.api`, the tree builder in
:mod:`culm.builder`, component classes in :mod:`culm.components`.
"""

from culm import states
from culm.core import GATEWAY_STRATEGY_FIRST, GATEWAY_STRATEGY_ONLY, Settings, StateChange, configure
from culm.errors import (
    CulmError,
    InvalidOperationError,
    NotFoundError,
    PluginConflictError,
    PluginNotFoundError,
    TreeInvalidError,
)
from culm.runtime import Runtime

__version__ = "0.1.0"

__all__ = [
    # runtime
    "Runtime",
    "Settings",
    "configure",
    "GATEWAY_STRATEGY_ONLY",
    "GATEWAY_STRATEGY_FIRST",
    "StateChange",
    # states
    "states",
    # errors
    "CulmError",
    "NotFoundError",
    "InvalidOperationError",
    "TreeInvalidError",
    "PluginConflictError",
    "PluginNotFoundError",
]
