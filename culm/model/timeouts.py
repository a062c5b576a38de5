"""Node timeouts as a tree states them: an activity's ``timeout_config`` (bamboo-pipeline's contrib
node timeout, ``{"enable": bool, "action": str, "seconds": int}``). Pure data: what the validator
refuses and what the compiled graph keeps; :mod:`culm.core.timeouts` enforces it.

As in bamboo, a config without ``enable: true`` is off and nothing else of it is looked at (saved
forms keep disabled configs with blank fields). An enabled one must name a known action and a
positive whole number of seconds, or the tree is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

FORCED_FAIL = "forced_fail"
FORCED_FAIL_AND_SKIP = "forced_fail_and_skip"
ACTIONS = (FORCED_FAIL, FORCED_FAIL_AND_SKIP)
# About 30 years: beyond it a deadline is a typo, and epoch seconds stay exact in a double.
MAX_SECONDS = 10**9


@dataclass(frozen=True, slots=True)
class NodeTimeout:
    """An enabled timeout of one activity: after ``seconds`` RUNNING, ``action`` runs."""

    action: str
    seconds: int


def is_enabled(config: Any) -> bool:
    """Whether ``config`` (an activity's ``timeout_config``) is switched on."""
    return isinstance(config, dict) and config.get("enable") is True


def config_problems(config: Any) -> Iterator[str]:
    """What is wrong with one activity's ``timeout_config``, each naming the field."""
    if config is None:
        return
    if not isinstance(config, dict):
        yield "timeout_config must be a dict {enable, action, seconds}"
        return
    enable = config.get("enable")
    if enable is not None and not isinstance(enable, bool):
        yield f"timeout_config.enable must be true or false, got {enable!r}"
        return
    if enable is not True:
        return
    seconds = config.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 < seconds <= MAX_SECONDS:
        yield f"timeout_config.seconds must be a whole number of seconds from 1 to {MAX_SECONDS}, got {seconds!r}"
    action = config.get("action")
    if action not in ACTIONS:
        yield f"timeout_config.action must be one of {', '.join(ACTIONS)}, got {action!r}"


def node_timeout(raw: dict[str, Any]) -> NodeTimeout | None:
    """The enabled timeout of a validated activity, or None."""
    config = raw.get("timeout_config")
    if not isinstance(config, dict) or config.get("enable") is not True:
        return None
    return NodeTimeout(str(config["action"]), int(config["seconds"]))
