"""bamboo-pipeline's ``pipeline.contrib.node_timeout.api``, for culm's engine.

In bamboo a timeout needs a Django app, Redis, a scanner process and a row per node written by
:func:`batch_create_node_timeout_config` before the run. In culm the engine itself enforces every
enabled ``timeout_config`` of the tree it runs (:mod:`culm.core.timeouts`), on every runtime, with
nothing more to run or store: these functions keep bamboo users' code working, and check configs
early.

Where culm differs (docs/node-timeout.md says why):

* :func:`apply_node_timout_configs` writes the configs into ``pipeline_tree`` as bamboo does, and
  returns a copy *with* them (bamboo returns a copy taken before, without them: a caller who runs
  the returned tree silently gets no timeout);
* a bad config (seconds not a positive whole number, an unknown action) is refused naming the node
  and the field, where bamboo skips it without a word.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from culm._printable import engine_logger
from culm.errors import TreeInvalidError, TreeProblem
from culm.model.timeouts import ACTIONS as ACTIONS  # re-exported: bamboo users read the action names here
from culm.model.timeouts import config_problems, is_enabled

logger = engine_logger("culm.contrib.node_timeout")


@dataclass(frozen=True)
class TimeoutNodeConfig:
    """One enabled node timeout (the fields of bamboo's ``TimeoutNodeConfig`` rows)."""

    node_id: str
    root_pipeline_id: str
    action: str
    timeout: int


def _service_activities(tree: Any, where: str = "pipeline_tree") -> Iterator[tuple[str, dict[str, Any]]]:
    """``(id, activity)`` of every ServiceActivity of ``tree`` and its subprocesses."""
    activities = tree.get("activities") if isinstance(tree, dict) else None
    if not isinstance(activities, dict):
        raise TreeInvalidError([TreeProblem(where, "must be a pipeline tree with an 'activities' dict")])
    for act_id, act in activities.items():
        if not isinstance(act, dict):
            continue
        if act.get("type") == "SubProcess":
            yield from _service_activities(act.get("pipeline"), f"{act_id}.pipeline")
        elif act.get("type") == "ServiceActivity":
            yield str(act_id), act


def apply_node_timout_configs(pipeline_tree: dict[str, Any], configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Write ``configs`` (``{node_id: {"enable", "action", "seconds"}}``) into the
    ``timeout_config`` of the matching ServiceActivities, subprocesses included (bamboo's name,
    misspelling included; :func:`apply_node_timeout_configs` is the same function).

    Each config is merged over the activity's current one. ``pipeline_tree`` is changed in place,
    as bamboo does, and a deep copy of it, configs included, is returned.

    Raises:
        TreeInvalidError: ``configs`` is not a dict of dicts, or a merged config is invalid; every
            problem names the node and the field. Nothing is written then.
    """
    if not isinstance(configs, Mapping):
        raise TreeInvalidError([TreeProblem("configs", "must be a dict {node_id: {enable, action, seconds}}")])
    merged: list[tuple[dict[str, Any], dict[str, Any]]] = []
    problems: list[TreeProblem] = []
    found: set[str] = set()
    for act_id, act in _service_activities(pipeline_tree):
        if act_id not in configs:
            continue
        found.add(act_id)
        config = configs[act_id]
        if not isinstance(config, Mapping):
            problems.append(TreeProblem(act_id, "timeout_config must be a dict {enable, action, seconds}"))
            continue
        current = act.get("timeout_config")
        new = {**(current if isinstance(current, dict) else {}), **config}
        problems += [TreeProblem(act_id, p) for p in config_problems(new)]
        merged.append((act, new))
    if problems:
        raise TreeInvalidError(problems)
    for act, new in merged:
        act["timeout_config"] = new
    unknown = sorted(str(k) for k in configs if k not in found)
    if unknown:
        logger.warning("no ServiceActivity of pipeline %s has the id(s) %s: their timeout configs are not applied",
                       pipeline_tree.get("id"), ", ".join(unknown))
    return copy.deepcopy(pipeline_tree)


apply_node_timeout_configs = apply_node_timout_configs


def batch_create_node_timeout_config(root_pipeline_id: str, pipeline_tree: dict[str, Any]) -> dict[str, Any]:
    """The enabled node timeouts of ``pipeline_tree``, as bamboo's function of the same name
    returns them: ``{"result": bool, "data": [TimeoutNodeConfig, ...], "message": str}``.

    culm stores nothing here: ``run_pipeline`` reads the timeouts from the tree itself, so calling
    this is optional. A bad config makes ``result`` False with a message naming every node and
    field at fault (``run_pipeline`` would refuse the tree the same way).
    """
    if not isinstance(root_pipeline_id, str) or not root_pipeline_id:
        return {"result": False, "data": [], "message": "root_pipeline_id must be a non-empty string"}
    try:
        activities = list(_service_activities(pipeline_tree))
    except TreeInvalidError as exc:
        return {"result": False, "data": [], "message": str(exc)}
    problems = [TreeProblem(act_id, p) for act_id, act in activities for p in config_problems(act.get("timeout_config"))]
    if problems:
        return {"result": False, "data": [], "message": str(TreeInvalidError(problems))}
    data = [TimeoutNodeConfig(act_id, root_pipeline_id, act["timeout_config"]["action"], act["timeout_config"]["seconds"])
            for act_id, act in activities if is_enabled(act.get("timeout_config"))]
    return {"result": True, "data": data, "message": "success"}
