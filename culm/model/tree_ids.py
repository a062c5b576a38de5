"""The ids of a pipeline tree: walk its pipelines and nodes, give it fresh ids.

Tolerant of a malformed tree (parts that are not dicts are passed over), so that tools can use
these before the tree is validated.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any


def walk_tree(tree: Any) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each pipeline of a tree (the root, then its subprocesses' pipelines) with its nodes that
    have a string id; tolerant of a malformed tree (parts that are not dicts are passed over)."""
    stack = [tree]
    while stack:
        pipe = stack.pop()
        if not isinstance(pipe, dict):
            continue
        nodes: list[Any] = [pipe.get("start_event"), pipe.get("end_event")]
        for key in ("activities", "gateways"):
            if isinstance(pipe.get(key), dict):
                nodes.extend(pipe[key].values())
        found = [n for n in nodes if isinstance(n, dict) and isinstance(n.get("id"), str)]
        stack.extend(n.get("pipeline") for n in found)
        yield pipe, found


def _tree_ids(tree: Any) -> dict[str, str]:
    """Every pipeline, node and flow id of a tree, mapped to a fresh id of the same kind."""
    fresh: dict[str, str] = {}
    for pipe, nodes in walk_tree(tree):
        if isinstance(pipe.get("id"), str):
            fresh[pipe["id"]] = "p" + uuid.uuid4().hex
        fresh.update({node["id"]: "n" + uuid.uuid4().hex for node in nodes})
        if isinstance(pipe.get("flows"), dict):
            fresh.update({flow_id: "f" + uuid.uuid4().hex for flow_id in pipe["flows"] if isinstance(flow_id, str)})
    return fresh


def with_new_ids(tree: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``tree`` in which every id, and every exact reference to one, is fresh."""
    fresh = _tree_ids(tree)

    def renew(value: Any) -> Any:
        if isinstance(value, str):
            return fresh.get(value, value)
        if isinstance(value, dict):
            return {renew(k): renew(v) for k, v in value.items()}
        if isinstance(value, list):
            return [renew(v) for v in value]
        return value

    result: dict[str, Any] = renew(tree)
    return result
