"""The engine: states and their one transition table, node handlers, commands and queries.

The core imports only :mod:`culm.model`, :mod:`culm.data`, :mod:`culm.components` and
:mod:`culm.errors` (see docs/architecture.md). Storage and dispatch reach it through
:mod:`culm.core.ports` and the records of :mod:`culm.core.records`; what else other packages may
use is named here.
"""

from typing import TYPE_CHECKING

from culm._faces import lazy_face

if TYPE_CHECKING:
    from culm.core import invariants, observe, ports, records, signals, states, transitions, waits
    from culm.core.engine import Engine
    from culm.core.records import StateChange
    from culm.core.settings import (
        GATEWAY_STRATEGY_FIRST,
        GATEWAY_STRATEGY_ONLY,
        Settings,
        configure,
        process_settings,
    )

__all__ = [
    # the engine and its settings
    "Engine",
    "Settings",
    "configure",
    "process_settings",
    "GATEWAY_STRATEGY_ONLY",
    "GATEWAY_STRATEGY_FIRST",
    # states, the transition table and the signals sent after committed changes
    "states",
    "transitions",
    "signals",
    "StateChange",
    # what storage and dispatch implement and exchange
    "ports",
    "records",
    # hooks for a metrics exporter; the checker of the engine's promises; why a node waits
    "observe",
    "invariants",
    "waits",
]

# Imported when first used (culm._faces): `from culm.core import records` loads the records only.
__getattr__, __dir__ = lazy_face(__name__, {
    "Engine": ".engine",
    **dict.fromkeys(("Settings", "configure", "process_settings", "GATEWAY_STRATEGY_ONLY", "GATEWAY_STRATEGY_FIRST"),
                    ".settings"),
    "StateChange": ".records",
    **{name: f".{name}" for name in ("states", "transitions", "signals", "ports", "records", "observe", "invariants",
                                      "waits")},
})
