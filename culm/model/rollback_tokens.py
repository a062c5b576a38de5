"""Rollback tokens: bamboo's ``generate_pipeline_token(tree)``.

bamboo-pipeline's rollback contrib lets an operator roll back only to a node of the same *token*:
a node that ran on the same line of execution as the node rolled back from. The token map names
that line for every node reached from the start event (spec section 9.3):

* the start event and the main line share one token;
* each branch of a parallel or conditional parallel gateway gets a fresh token; the branches of
  an exclusive gateway keep the token in force;
* a converge gateway, and everything after it, takes the token in force before the gateway that
  opened the branches (so does an end event a branch runs into);
* a subprocess's interior gets a fresh token of its own; the subprocess node and the node after
  it keep the outer one.

Loops are cut first, as bamboo cuts them: a depth-first walk from the start event (nodes in the
tree's order: start, end, gateways, activities; each node's flows in the tree's flow order) finds
a flow closing a cycle, turns it round, and starts again until none is left; a turned flow is no
longer followed, so a node whose only way on was a loop-back ends its line there. The walk does
not change the caller's tree.

One deliberate difference: bamboo's walk loses its way after a gateway every one of whose
branches opens a gateway of its own (the converge gateway takes a branch's token and the nodes
after it get none); here they take the outer token, as the rule above says.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

from culm.model.builder import unique_id

__all__ = ["generate_pipeline_token"]

_FORKING = frozenset({"ParallelGateway", "ConditionalParallelGateway"})
_BRANCHING = _FORKING | {"ExclusiveGateway"}


def generate_pipeline_token(pipeline_tree: dict[str, Any], *,
                            new_token: Callable[[], str] | None = None) -> dict[str, str]:
    """The rollback token of every node reachable from the start event, subprocesses included.

    Args:
        pipeline_tree: A pipeline tree (bamboo's schema); it is not changed.
        new_token: Makes a token; a fresh ``t…`` id (33 characters, like bamboo's) by default.

    Returns:
        ``{node_id: token}`` for the nodes of the tree and of its subprocesses at every depth.
    """
    make = new_token or (lambda: unique_id("t"))
    tree = copy.deepcopy(pipeline_tree)
    _cut_loops(tree)
    tokens: dict[str, str] = {}
    first = make()
    tokens[tree["start_event"]["id"]] = first
    _Walk(tokens, make).line(tree, tree["start_event"], first)
    return tokens


# --------------------------------------------------------------------------- cutting loops


def _outgoing(node: dict[str, Any]) -> list[str]:
    flows = node.get("outgoing")
    if not flows:
        return []
    return list(flows) if isinstance(flows, list) else [flows]


def _cut_loops(tree: dict[str, Any]) -> None:
    """Turns round the flows that close cycles, in this tree and each subprocess tree."""
    pending = [tree]
    while pending:
        current = pending.pop()
        while (closing := _first_closing_flow(current)) is not None:
            flow = current["flows"][closing]
            source = _node(current, flow["source"])
            flow["source"], flow["target"] = flow["target"], flow["source"]
            if source is not None:
                source["outgoing"] = [f for f in _outgoing(source) if f != closing]
        pending.extend(act["pipeline"] for act in current.get("activities", {}).values()
                       if act.get("type") == "SubProcess" and isinstance(act.get("pipeline"), dict))


def _first_closing_flow(tree: dict[str, Any]) -> str | None:
    """The flow a depth-first walk in bamboo's order finds closing a cycle first, or None.

    Flows are found by their ends, the last flow of a (source, target) pair standing for all
    of them, as bamboo looks them up.
    """
    order = [tree["start_event"]["id"], tree["end_event"]["id"], *tree.get("gateways", {}), *tree.get("activities", {})]
    following: dict[str, list[str]] = {node_id: [] for node_id in order}
    by_ends: dict[tuple[str, str], str] = {}
    for flow_id, flow in tree.get("flows", {}).items():
        following.setdefault(flow["source"], []).append(flow["target"])
        following.setdefault(flow["target"], [])
        by_ends[(flow["source"], flow["target"])] = flow_id
    for source, target in _depth_first_closing(order, following):
        return by_ends[(source, target)]
    return None


def _depth_first_closing(order: list[str], following: dict[str, list[str]]) -> Iterator[tuple[str, str]]:
    visited: set[str] = set()
    on_path: set[str] = set()
    for root in order:
        if root in visited:
            continue
        visited.add(root)
        on_path.add(root)
        stack = [(root, iter(following[root]))]
        while stack:
            node_id, rest = stack[-1]
            target = next(rest, None)
            if target is None:
                on_path.discard(node_id)
                stack.pop()
            elif target in on_path:
                yield node_id, target
            elif target not in visited:
                visited.add(target)
                on_path.add(target)
                stack.append((target, iter(following[target])))


# --------------------------------------------------------------------------- handing out tokens


def _node(tree: dict[str, Any], node_id: str) -> dict[str, Any] | None:
    for place in ("activities", "gateways"):
        found = tree.get(place, {}).get(node_id)
        if found is not None:
            return found  # type: ignore[no-any-return]
    for key in ("start_event", "end_event"):
        if tree.get(key, {}).get("id") == node_id:
            return tree[key]  # type: ignore[no-any-return]
    return None


def _next_nodes(tree: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for flow_id in _outgoing(node):
        flow = tree["flows"].get(flow_id)
        target = _node(tree, flow["target"]) if flow else None
        if target is not None:
            found.append(target)
    return found


class _Walk:
    """Follows one line of execution, writing each node's token, up to where the line ends."""

    def __init__(self, tokens: dict[str, str], make: Callable[[], str]) -> None:
        self.tokens, self.make = tokens, make
        # (node id, token) -> where the line from that node with that token ends: the branches
        # of an exclusive gateway that rejoin at an ordinary node would each walk the rest of the
        # tree again (2**k walks after k such gateways); the second walk would write the same
        # tokens, so it is not made.
        self.ends: dict[tuple[str, str], dict[str, Any] | None] = {}

    def line(self, tree: dict[str, Any], node: dict[str, Any], token: str) -> dict[str, Any] | None:
        """Walks on from ``node`` (whose token is written); returns the converge gateway or end
        event the line runs into, or None where it stops (a loop-back was its only way on)."""
        passed: list[tuple[str, str]] = []
        end = self._line(tree, node, token, passed)
        for key in passed:
            self.ends[key] = end
        return end

    def _line(self, tree: dict[str, Any], node: dict[str, Any], token: str,
              passed: list[tuple[str, str]]) -> dict[str, Any] | None:
        while True:
            key = (node["id"], token)
            if key in self.ends:
                return self.ends[key]
            passed.append(key)
            kind = node.get("type")
            if node["id"] == tree["end_event"]["id"] or kind == "ConvergeGateway":
                return node
            if kind in _BRANCHING:
                after = self._gateway(tree, node, token)
                if after is None:
                    return None
                node = after
            else:
                if kind == "SubProcess" and isinstance(node.get("pipeline"), dict):
                    self._subprocess(node["pipeline"])
                ahead = _next_nodes(tree, node)
                if not ahead:
                    return None
                node = ahead[0]
            self.tokens[node["id"]] = token

    def _gateway(self, tree: dict[str, Any], gateway: dict[str, Any], token: str) -> dict[str, Any] | None:
        """Tokens for each branch; returns the node after the branches' converge gateway (None when
        they all end)."""
        ends: dict[str, dict[str, Any]] = {}
        for first in _next_nodes(tree, gateway):
            branch = self.make() if gateway.get("type") in _FORKING else token
            self.tokens[first["id"]] = branch
            end = self.line(tree, first, branch)
            if end is not None:
                ends[end["id"]] = end
        afters = []
        for end in ends.values():
            self.tokens[end["id"]] = token
            ahead = _next_nodes(tree, end) if end["id"] != tree["end_event"]["id"] else []
            if ahead:
                afters.append(ahead[0])
        for extra in afters[1:]:  # branches that converge in different places: each goes on
            self.tokens[extra["id"]] = token
            self.line(tree, extra, token)
        return afters[0] if afters else None

    def _subprocess(self, inner: dict[str, Any]) -> None:
        token = self.make()
        self.tokens[inner["start_event"]["id"]] = token
        self.line(inner, inner["start_event"], token)
