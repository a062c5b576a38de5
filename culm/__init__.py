"""culm: a durable, event-driven workflow engine, API-compatible with bamboo-engine.

The public face of the package. Engine API functions live in :mod:`culm.api`, the tree builder in
:mod:`culm.builder`, component classes in :mod:`culm.components`.

The names below are imported when first used (``culm.Runtime``, ``from culm import Runtime``):
``import culm`` alone, which every ``culm.*`` module does first, costs nothing, so that ``culm
--help`` or a ``culm`` argument error does not load the engine, SQLAlchemy or Celery
(docs/performance.md, "The command line's start").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from culm._faces import lazy_face

if TYPE_CHECKING:
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

__getattr__, __dir__ = lazy_face(__name__, {
    "Runtime": "culm.runtime",
    **dict.fromkeys(("Settings", "configure", "GATEWAY_STRATEGY_ONLY", "GATEWAY_STRATEGY_FIRST", "StateChange"),
                    "culm.core"),
    "states": "culm.states",
    **dict.fromkeys(("CulmError", "NotFoundError", "InvalidOperationError", "TreeInvalidError",
                     "PluginConflictError", "PluginNotFoundError"), "culm.errors"),
})
