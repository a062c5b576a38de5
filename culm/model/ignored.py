"""Tree settings culm accepts and ignores, as bamboo-engine does, and the warning that says so.

An activity's ``timeout`` (bamboo-engine 2.x dropped its engine-side timeout monitor) is kept in
the tree but nothing enforces it. A run whose tree sets it logs one warning per process, so that
nobody believes a node is guarded by a timeout that nothing enforces. (An activity's
``timeout_config``, bamboo-pipeline's contrib node timeout, is enforced: :mod:`culm.core.timeouts`.)
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from typing import Any

from culm._printable import engine_logger

logger = engine_logger("culm.ignored")

__all__ = ["IgnoredSettingWarning", "ignored_timeouts", "warn_ignored_timeouts"]


class IgnoredSettingWarning(UserWarning):
    """A tree sets something culm accepts for compatibility and does not act on."""


_lock = threading.Lock()
_warned = False


def ignored_timeouts(tree: Any) -> Iterator[tuple[str, str]]:
    """``(activity id, "timeout")`` of every activity, subprocesses included, that sets the
    ``timeout`` culm ignores."""
    if not isinstance(tree, dict):
        return
    activities = tree.get("activities")
    for act_id, act in (activities.items() if isinstance(activities, dict) else ()):
        if not isinstance(act, dict):
            continue
        if act.get("type") == "SubProcess":
            yield from ignored_timeouts(act.get("pipeline"))
            continue
        if act.get("timeout") is not None:
            yield str(act_id), "timeout"


def warn_ignored_timeouts(tree: Any) -> bool:
    """Warn (once per process) when ``tree`` sets an activity timeout; True if it warned now."""
    global _warned
    if _warned:  # the walk is skipped for good once the warning is out
        return False
    found = next(ignored_timeouts(tree), None)
    if found is None:
        return False
    with _lock:
        if _warned:
            return False
        _warned = True
    node_id, field = found
    message = (
        f"activity {node_id} sets {field!r}, which culm ignores as bamboo-engine does: nothing stops a node "
        "that runs too long unless its timeout_config enables a timeout (this warning is given once per process)"
    )
    logger.warning(message)
    try:
        warnings.warn(message, IgnoredSettingWarning, stacklevel=3)
    except Warning:  # a filter set to "error" must not turn a started run into a refused one
        pass
    return True


def _reset_for_tests() -> None:
    global _warned
    with _lock:
        _warned = False
