"""Reference cycles between the context variables of a tree, found before anything runs.

A splice or lazy variable that needs itself, directly or through others (``${a}`` = ``"${b}"``,
``${b}`` = ``"${a}"``), can never be resolved: every node that reads it fails. bamboo finds out
when such a node runs (its resolution recurses until Python gives up); culm refuses the tree.

A cycle through a key that something else gives a plain value before the variables are read is
not one: a node output mapped onto the key (``NodeOutput`` and its kin), a subprocess param that
presets a key of the subprocess, and keys the run is given (``root_pipeline_context`` for the
root, ``subprocess_context`` for every subprocess) all replace the variable with a value.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any

from culm.data import template
from culm.data.context import lazy_input_key
from culm.errors import TreeProblem

_TEMPLATED = ("splice", "lazy")


def variable_cycle_problems(
    tree: Any, root_preset: Collection[str] = (), subprocess_preset: Collection[str] = ()
) -> list[TreeProblem]:
    """One problem per group of variables that need each other, in every (sub)pipeline of ``tree``.

    Args:
        tree: A pipeline tree; parts that are not well formed are passed over (the shape checks
            report them).
        root_preset: Keys the run presets in the root context (``root_pipeline_context``).
        subprocess_preset: Keys the run presets in every subprocess context (``subprocess_context``).
    """
    problems: list[TreeProblem] = []
    for pipe, where, preset in _pipelines(tree, frozenset(root_preset), frozenset(subprocess_preset)):
        refs = _template_refs(pipe, preset)
        for cycle in _cycles(refs):
            shown = " -> ".join([*cycle, cycle[0]])
            problems.append(TreeProblem(where, f"reference cycle between context variables: {shown}; "
                                               "none of them can ever be resolved"))
    return problems


def _pipelines(
    tree: Any, root_preset: frozenset[str], subprocess_preset: frozenset[str]
) -> Iterator[tuple[dict[str, Any], str, frozenset[str]]]:
    """(pipeline, where its data inputs are, keys preset in its context), root first."""
    pending: list[tuple[Any, str, frozenset[str]]] = [(tree, "data.inputs", root_preset)]
    while pending:
        pipe, where, preset = pending.pop()
        if not isinstance(pipe, dict):
            continue
        yield pipe, where, preset
        for act_id, act in _dict(pipe.get("activities")).items():
            if isinstance(act, dict) and act.get("type") == "SubProcess":
                params = frozenset(k for k in _dict(act.get("params")) if isinstance(k, str))
                pending.append((act.get("pipeline"), f"{act_id}.data.inputs", params | subprocess_preset))


def _template_refs(pipe: dict[str, Any], preset: frozenset[str]) -> dict[str, set[str]]:
    """``{key: keys its template reads}`` of the splice and lazy variables of one context."""
    variables: dict[str, Any] = {}
    written: set[str] = set(preset)  # keys that get a plain value from elsewhere
    for key, var in _dict(_dict(pipe.get("data")).get("inputs")).items():
        if not isinstance(key, str) or not isinstance(var, dict):
            continue
        if var.get("source_act"):
            written.add(key)
        elif var.get("type") in _TEMPLATED:
            variables[key] = var.get("value")
    for node_id, act in _dict(pipe.get("activities")).items():
        if not isinstance(act, dict):
            continue
        inputs = act.get("params") if act.get("type") == "SubProcess" else _dict(act.get("component")).get("inputs")
        for key, var in _dict(inputs).items():
            if isinstance(key, str) and isinstance(var, dict) and var.get("type") == "lazy":
                variables[lazy_input_key(key, str(node_id))] = var.get("value")
    refs: dict[str, set[str]] = {}
    for key, value in variables.items():
        if key in written:
            continue
        try:
            found = template.references(value)
        except RecursionError:  # nested too deeply: the shape checks say so
            continue
        refs[key] = {ref for ref in found if ref in variables and ref not in written}
    return refs


def _cycles(refs: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle (keys in reference order) per strongly connected group that has one (Tarjan's
    algorithm, iterative: a long chain of variables must not exhaust the stack)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(refs):
        if root in index:
            continue
        work = [(root, iter(sorted(refs[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            key, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(refs[child]))))
                elif child in on_stack:
                    low[key] = min(low[key], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[key])
            if low[key] == index[key]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == key:
                        break
                if len(group) > 1 or key in refs[key]:
                    found.append(_cycle_in(group, refs))
    return found


def _cycle_in(group: set[str], refs: Mapping[str, set[str]]) -> list[str]:
    """A shortest cycle through the first key of ``group`` (breadth first inside the group)."""
    start = min(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for key in frontier:
            for ref in sorted(refs[key] & group):
                if ref == start:
                    path = [key]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return path[::-1]
                if ref not in came_from:
                    came_from[ref] = key
                    following.append(ref)
        frontier = following
    return [start]  # unreachable: every group handed in holds a cycle through each of its keys


def _dict(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}
