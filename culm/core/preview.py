"""Preview a node's rendered inputs from a tree alone: no run, no storage."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from culm.core import data as cdata
from culm.core.records import ContextValue
from culm.data import context as dctx
from culm.data import template
from culm.errors import InvalidOperationError, NotFoundError
from culm.model import compiled as g


def preview(tree: dict[str, Any], node_id: str, subprocess_stack: list[str], root_data: dict[str, Any],
            parent_params: dict[str, Any], nested_objects: bool = False) -> dict[str, Any]:
    """Render the inputs of ``node_id`` (inside ``subprocess_stack``, outer first);
    ``nested_objects`` as the runtime's ``Settings.render_nested_objects``.

    Every render of the preview shares one node's budgets of time and text (a stack of 64
    subprocesses, each with its own, held a request for ten minutes).
    """
    with template.output_bound(template.MAX_NODE_RENDER_OUTPUT):
        return _preview(tree, node_id, subprocess_stack, root_data, parent_params, nested_objects)


def _preview(tree: dict[str, Any], node_id: str, subprocess_stack: list[str], root_data: dict[str, Any],
             parent_params: dict[str, Any], nested_objects: bool) -> dict[str, Any]:
    from culm.components import variables
    from culm.model.validator import process_tree

    if not isinstance(tree, dict):
        raise InvalidOperationError("pipeline must be a dict (a pipeline tree)")
    graph = g.compile_tree(process_tree(tree, cycle_tolerate=True))

    def lazy(var: dctx.ContextVar, rendered: Any) -> Any:
        cls = variables.library.get(var.code or "")
        return cls(value=rendered, pipeline_data=root_data, inner_loop=-1, key=var.key).get_value()

    pipeline_id = graph.root_id
    context = _context(graph.pipelines[pipeline_id], {k: _plain(v) for k, v in parent_params.items()})
    for sub_id in subprocess_stack:
        sub = graph.nodes.get(sub_id)
        if sub is None or sub.type != g.SUBPROCESS or sub.pipeline_id != pipeline_id:
            raise NotFoundError(f"subprocess {sub_id} is not in pipeline {pipeline_id}")
        params = cdata.render_inputs(sub.raw.get("params") or {}, _fetch(context), lazy,
                                     nested_objects=nested_objects)
        pipeline_id = sub_id
        context = _context(graph.pipelines[sub_id], params)
    node = graph.nodes.get(node_id)
    if node is None or node.pipeline_id != pipeline_id:
        raise NotFoundError(f"node {node_id} is not in pipeline {pipeline_id}")
    if node.type == g.ACTIVITY:
        raw = (node.raw.get("component") or {}).get("inputs") or {}
    elif node.type == g.SUBPROCESS:
        raw = node.raw.get("params") or {}
    else:
        raise InvalidOperationError(f"node {node_id} is {g.a_type(node.type)}: only activities and subprocesses have inputs")
    return cdata.render_inputs(raw, _fetch(context), lazy, nested_objects=nested_objects)


def _plain(value: Any) -> Any:
    return value.get("value") if isinstance(value, dict) and "type" in value else value


def _context(spec: g.PipelineSpec, plain: dict[str, Any]) -> dict[str, ContextValue]:
    return {cv.key: cv for cv in cdata.context_values_for(spec, plain)}


def _fetch(context: dict[str, ContextValue]) -> cdata.Fetch:
    def fetch(keys: Iterable[str]) -> dict[str, ContextValue]:
        return {k: context[k] for k in keys if k in context}

    return fetch
