"""The new raw inputs ``retry_node(node_id, data=...)`` gives a node, checked before anything is stored.

As in bamboo, ``data`` replaces the node's raw inputs entirely (an activity's component inputs, a
SubProcess's params), every key rendered unless listed under ``_escape_render_keys``. An activity
may be given keys its tree did not have: its component reads them like any input. What would be
stored and then lost, or stored as something else, is refused naming the node and the key:

- a key that is not a string (the store keeps JSON: ``1`` would come back as ``"1"``);
- ``_escape_render_keys`` that is not a list of keys of ``data`` (a string would escape its
  letters; a name not in ``data`` would leave the input meant rendered verbatim);
- ``_loop`` or ``_inner_loop`` for an activity (the engine sets them on every run);
- for a SubProcess, a key that is neither one of its params, nor a variable of its pipeline's
  context, nor referenced (``${key}``) anywhere in its pipeline: the value would land in a context
  variable nothing reads; and a key no context key column holds;
- any key for a node that has no inputs (a gateway, an event): nothing would read them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from culm.data import template
from culm.data.template import references
from culm.errors import InvalidOperationError
from culm.model import compiled as g
from culm.model.limits import KEY_LENGTH, column_problem

ESCAPE_KEY = "_escape_render_keys"
ENGINE_INPUTS = ("_loop", "_inner_loop")  # set by the engine on every run of an activity


def retry_inputs(node: g.Node, data: Any, in_context: Callable[[list[str]], Collection[str]]) -> dict[str, Any]:
    """The raw inputs ``data`` gives ``node``, as the store keeps them.

    ``in_context(keys)``: which of ``keys`` the context of a SubProcess's pipeline holds now.

    Raises:
        InvalidOperationError: ``data`` would corrupt the node or be lost; the message names the
            node and the key.
    """
    what = f"retry data for node {node.id}"
    if not isinstance(data, dict):
        raise InvalidOperationError(f"{what} must be a dict, got {type(data).__name__}")
    data = dict(data)
    escape = _escape_keys(what, data)
    for key in data:
        if not isinstance(key, str):
            raise InvalidOperationError(f"{what}: key {key!r} must be a string (an input's name)")
    count = sum(template.fragment_count(v) for k, v in data.items() if k not in escape)
    if problem := template.too_many_fragments(count, f"the templates of the {what}"):
        raise InvalidOperationError(problem)  # each is parsed on its own, before any clock can stop it
    if data and node.type not in (g.ACTIVITY, g.SUBPROCESS):
        raise InvalidOperationError(f"{what}: node {node.id} is {g.a_type(node.type)}, which has no inputs to replace "
                                    f"(keys given: {', '.join(sorted(data))})")
    if node.type == g.ACTIVITY:
        for key in ENGINE_INPUTS:
            if key in data:
                raise InvalidOperationError(f"{what}: key {key!r} is set by the engine on every run; "
                                            "a value given for it would be lost")
    elif node.type == g.SUBPROCESS:
        _check_params(what, node, data, in_context)
    return {k: {"type": "splice", "value": v, "need_render": k not in escape} for k, v in data.items()}


def _escape_keys(what: str, data: dict[Any, Any]) -> set[str]:
    if ESCAPE_KEY not in data:
        return set()
    escape = data.pop(ESCAPE_KEY)
    if escape is None:
        return set()
    if not isinstance(escape, list | tuple) or not all(isinstance(k, str) for k in escape):
        raise InvalidOperationError(f"{what}: {ESCAPE_KEY} must be a list of input names, "
                                    f"got {type(escape).__name__} {escape!r:.100}")
    unknown = [k for k in escape if k not in data]
    if unknown:
        raise InvalidOperationError(f"{what}: {ESCAPE_KEY} names {', '.join(map(repr, unknown))}, "
                                    "which the data does not hold")
    return set(escape)


def _check_params(what: str, node: g.Node, data: dict[str, Any],
                  in_context: Callable[[list[str]], Collection[str]]) -> None:
    """A SubProcess's params become context variables of its pipeline: only keys it reads count."""
    for key in data:
        if problem := column_problem(key, KEY_LENGTH):
            raise InvalidOperationError(f"{what}: key {key!r:.100} {problem}")
    declared = set(node.raw.get("params") or {})
    unknown = [k for k in data if k not in declared]
    if unknown:
        read = references(node.raw.get("pipeline")) | set(in_context(unknown))
        unknown = [k for k in unknown if k not in read]
    if unknown:
        shown = ", ".join(sorted(declared)) or "none"
        raise InvalidOperationError(
            f"{what}: key {unknown[0]!r} is neither a param of this SubProcess ({shown}) nor a variable its "
            "pipeline has or refers to (keys are written ${name}); nothing would read it")
