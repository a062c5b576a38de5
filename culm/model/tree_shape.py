"""Shape checks of a pipeline tree: keys, types, ids, variables, components and conditions.

:class:`ShapeChecker` walks the tree pipeline by pipeline (subprocesses from a work list, not by
recursion), records every problem it finds and fills one :class:`PipelineGraph` per pipeline
with the nodes and flows that are well formed enough for the graph checks.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from culm import _json
from culm.data import template
from culm.data.context import lazy_input_key
from culm.errors import TreeProblem
from culm.model import limits, timeouts
from culm.model.flowgraph import (
    ACTIVITY_TYPES,
    CONDITIONAL_TYPES,
    END,
    GATEWAY_TYPES,
    START,
    SUBPROCESS,
    PipelineGraph,
)

MAX_DEPTH = 64
VAR_TYPES = ("plain", "splice", "lazy")
PLAIN_END = "EmptyEndEvent"
ACTIVITY_FLAGS = ("error_ignorable", "skippable", "retryable", "optional")
LOOP_FLAGS = ("enable", "fail_skip", "retryable", "skippable")
VAR_FLAGS = ("is_param", "need_render", "need_initialization")
_PLAIN_OR_SPLICE = ("plain", "splice")  # a tuple: a damaged tree's type may be unhashable
_REFERRING = ("splice", "lazy")
_CONTEXT_KEYED = ("data input", "param")
_NODE_INPUTS = ("component input", "param")
_CONTAINERS = (dict, list, tuple, set, frozenset)


def label(value: Any) -> str:
    """A printable ``where`` for a key that may not be a string."""
    return value if isinstance(value, str) else repr(value)


def label_text(value: str) -> str:
    """A string as it can be shown: as it is, or quoted and escaped when it holds characters that
    cannot be printed (a NUL, a lone surrogate)."""
    return value if value.isprintable() else repr(value)


def tree_size(tree: Any) -> tuple[int, int, int]:
    """How many nodes, flows and variables ``tree`` has, its subprocesses' included (counted as the
    validator sees them: the start and end event of each pipeline, its activities and gateways, its
    flows, the data inputs of its ``data``).

    Counts without building anything, so a tree far over the limits is refused before its
    validation costs memory; parts that are not dicts count nothing (the validator names them).
    """
    nodes = flows = variables = 0
    work: list[tuple[Any, int]] = [(tree, 0)]
    while work:
        pipe, depth = work.pop()
        if not isinstance(pipe, dict):
            continue
        activities, gateways, links, data = (pipe.get(key) for key in ("activities", "gateways", "flows", "data"))
        activities = activities if isinstance(activities, dict) else {}
        nodes += 2 + len(activities) + (len(gateways) if isinstance(gateways, dict) else 0)
        flows += len(links) if isinstance(links, dict) else 0
        inputs = data.get("inputs") if isinstance(data, dict) else None
        variables += len(inputs) if isinstance(inputs, dict) else 0
        if depth < MAX_DEPTH:  # deeper is refused anyway, and a tree holding itself must end
            work.extend((act["pipeline"], depth + 1) for act in activities.values()
                        if isinstance(act, dict) and act.get("type") == SUBPROCESS and "pipeline" in act)
    return nodes, flows, variables


def too_large(size: tuple[int, int, int]) -> str | None:
    """Why a tree of :func:`tree_size` ``size`` is too large to validate, or None (the limits are
    read now: a program may set them)."""
    nodes, flows, variables = size
    if nodes > limits.MAX_TREE_NODES or flows > limits.MAX_TREE_FLOWS:
        return (f"tree is too large: it has {nodes:,} nodes and {flows:,} flows, over the {limits.MAX_TREE_NODES:,} "
                f"nodes and {limits.MAX_TREE_FLOWS:,} flows a tree may have (culm.model.limits."
                "MAX_TREE_NODES, MAX_TREE_FLOWS); split the work into several pipelines")
    if variables > limits.MAX_TREE_VARIABLES:
        return (f"tree is too large: it has {variables:,} variables, over the {limits.MAX_TREE_VARIABLES:,} a tree "
                "may have (culm.model.limits.MAX_TREE_VARIABLES, $CULM_MAX_TREE_VARIABLES); split the work into "
                "several pipelines")
    return None


@dataclass
class _Pending:
    tree: Any
    expected_id: str | None
    depth: int


@dataclass
class ShapeChecker:
    """Checks the shape of every pipeline of a tree and collects their graphs."""

    component_exists: Callable[[str, str | None], bool] | None = None
    lazy_exists: Callable[[str], bool] | None = None
    end_event_exists: Callable[[str], bool] | None = None
    problems: list[TreeProblem] = field(default_factory=list)
    graphs: list[PipelineGraph] = field(default_factory=list)
    _ids: set[str] = field(default_factory=set)
    _subprocesses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _non_ascii_context_keys: bool = False  # some data input or param key is not ASCII
    # A variable's value holds a dict whose keys JSON would merge: copy the tree exactly.
    merging_keys: bool = False
    # "${" in the variables (data inputs) of every pipeline of the tree.
    variable_fragments: int = 0
    # Some variable may take part in a reference cycle: a splice or lazy data input, or a lazy
    # node input or param (what culm.model.variable_cycles reads; the others never refer).
    referring_variables: bool = False

    def add(self, where: str | None, message: str) -> None:
        """Record one problem."""
        self.problems.append(TreeProblem(where, message))

    def run(self, tree: Any, size: tuple[int, int, int] | None = None) -> None:
        """Check ``tree`` and every nested subprocess tree (none when the tree is too large).
        ``size``: its :func:`tree_size`, when the caller counted it already."""
        if limits.ENVIRONMENT_PROBLEMS:  # the bounds below are not what the operator asked for
            self.add(None, "tree not validated: " + "; ".join(limits.ENVIRONMENT_PROBLEMS))
            return
        problem = too_large(size if size is not None else tree_size(tree))
        if problem is not None:
            self.add(label(tree.get("id")) if isinstance(tree, dict) else None, problem)
            return
        work = [_Pending(tree, None, 0)]
        while work:
            item = work.pop()
            work.extend(self._pipeline(item))
        if self._non_ascii_context_keys:  # rare: ASCII keys are their own NFKC form
            for nid, node in self._subprocesses:
                self._params_beside_inputs(nid, node)
        if self.too_many_fragments:
            where = label(tree.get("id")) if isinstance(tree, dict) else None
            self.add(where, f"the variables of the tree hold {self.variable_fragments:,} ${{...}} fragments, over the "
                            f"{template.MAX_TREE_VARIABLE_FRAGMENTS:,} a tree may have")

    @property
    def too_many_fragments(self) -> bool:
        """Whether the tree's variables hold too many fragments to parse them all (the checks of
        reference cycles and of fragment syntax are skipped then)."""
        return self.variable_fragments > template.MAX_TREE_VARIABLE_FRAGMENTS

    # -- helpers -------------------------------------------------------------------------------

    def _ask(self, where: str, what: str, check: Callable[..., bool] | None, *args: Any) -> bool:
        """Run a user callback; a callback that raises counts as "does not exist"."""
        if check is None:
            return True
        try:
            return bool(check(*args))
        except Exception as exc:  # a broken plugin registry must not crash validation
            self.add(where, f"checking {what} raised {type(exc).__name__}: {exc}")
            return False

    def _register(self, ident: str, *, stored: bool = True) -> None:
        """Note an id (``stored``: a pipeline or node id, kept in the store's id columns; a flow id
        lives only inside the stored tree)."""
        if ident in self._ids:
            self.add(ident, "id is used more than once in the tree")
        self._ids.add(ident)
        if not stored or (len(ident) <= limits.ID_LENGTH and ident.isascii() and ident.isprintable()
                          and "/" not in ident and ident not in (".", "..")):
            return  # the common case costs no call
        if problem := limits.column_problem(ident, limits.ID_LENGTH) or limits.id_text_problem(ident):
            self.add(label_text(ident), f"id {problem}")

    def _key(self, where: str, what: str, key: str, width: int | None) -> None:
        """Check a key the store keeps (``width``: of its column; None: kept inside a value)."""
        problem = limits.column_problem(key, width if width is not None else len(key))
        if problem:
            self.add(where, f"{what} key {key!r} {problem}")

    def _form(self, where: str, what: str, key: str, variables: dict[Any, Any],
              forms: dict[str, str] | None) -> dict[str, str] | None:
        """Refuse ``key`` when another key of the same context has its NFKC form.

        A ``${...}`` reference is read as a Python name, in NFKC form: of two such keys a reference
        reaches one only, and a reader cannot tell which. A key alone in its form is kept (bamboo
        ran it; data.outputs, a splice's source_key or update_context_values still reach it):
        :func:`~culm.model.syntax_warnings.tree_warnings` warns of it."""
        normal = unicodedata.normalize("NFKC", key)
        if normal == key:
            return forms
        forms = {} if forms is None else forms
        other = normal if normal in variables else forms.get(normal)
        if other is not None:
            self.add(where, f"{what} key {key!r} is not in Unicode's NFKC form ({ascii(key)}) and {other!r} "
                            f"({ascii(other)}) of the same context has the same form {normal!r}: every reference "
                            f"to either reads {normal!r}, so one of them can never be reached; rename one")
        forms.setdefault(normal, key)
        return forms

    def _params_beside_inputs(self, nid: str, node: dict[str, Any]) -> None:
        """The params of a subprocess and its pipeline's data inputs are keys of one context: refuse
        a param and an input that are different keys of one NFKC form (see :meth:`_form`)."""
        params, pipe = node.get("params"), node.get("pipeline")
        inputs = pipe.get("data") if isinstance(pipe, dict) else None
        inputs = inputs.get("inputs") if isinstance(inputs, dict) else None
        if not isinstance(params, dict) or not isinstance(inputs, dict):
            return
        forms: dict[str, str] = {}
        for key in inputs:
            if isinstance(key, str):
                forms.setdefault(key if key.isascii() else unicodedata.normalize("NFKC", key), key)
        for key in params:
            if isinstance(key, str) and key not in inputs:
                normal = key if key.isascii() else unicodedata.normalize("NFKC", key)
                other = forms.get(normal)
                if other is not None and other != key:
                    self.add(nid, f"param key {key!r} ({ascii(key)}) and data input {other!r} ({ascii(other)}) of its "
                                  f"pipeline are different keys of one context with the same NFKC form {normal!r}: "
                                  "every reference to either reads that one, so one of them can never be reached; "
                                  "rename one")

    def _value(self, where: str, what: str, value: Any) -> None:
        if not isinstance(value, _CONTAINERS):
            return
        if limits.too_deep(value):
            self.add(where, f"{what} is nested more than {limits.MAX_VALUE_DEPTH} levels deep")
        elif not self.merging_keys and _json.keys_collide(value):
            self.merging_keys = True

    def _section(self, pipe: dict[str, Any], key: str, where: str, required: bool) -> dict[Any, Any]:
        value = pipe.get(key)
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            self.add(where, f"pipeline key {key!r} must be a dict")
            return {}
        return value

    # -- pipelines -----------------------------------------------------------------------------

    def _pipeline(self, item: _Pending) -> list[_Pending]:
        """Check one pipeline; return the subprocess trees still to check."""
        pipe, where = item.tree, item.expected_id
        if not isinstance(pipe, dict):
            self.add(where, "pipeline tree must be a dict")
            return []
        pid = self._pipeline_id(pipe, item.expected_id)
        graph = PipelineGraph(pid or item.expected_id or label(pipe.get("id")))
        activities = self._section(pipe, "activities", graph.id, required=False)
        gateways = self._section(pipe, "gateways", graph.id, required=False)
        flows = self._section(pipe, "flows", graph.id, required=True)
        self._flows_of(flows, graph)
        out_by_node: dict[str, set[str]] = {}
        if any(isinstance(g, dict) and isinstance(g.get("type"), str) and g["type"] in CONDITIONAL_TYPES
               for g in gateways.values()):
            for flow_id, (source, _) in graph.flows.items():  # only conditions are checked against it
                out_by_node.setdefault(source, set()).add(flow_id)
        activity_ids = {key for key in activities if isinstance(key, str)}
        prefix = "" if item.expected_id is None else f"{graph.id}."
        self._start_event(pipe.get("start_event"), graph, prefix)
        self._end_event(pipe.get("end_event"), graph, prefix)
        pending: list[_Pending] = []
        for key, node in activities.items():
            pending.extend(self._activity(key, node, graph, activity_ids, item.depth))
        for key, node in gateways.items():
            self._gateway(key, node, graph, out_by_node)
        self._data(pipe.get("data"), "data" if item.expected_id is None else f"{graph.id}.data", activity_ids)
        self.graphs.append(graph)
        return pending

    def _pipeline_id(self, pipe: dict[str, Any], expected: str | None) -> str | None:
        pid = pipe.get("id")
        if not isinstance(pid, str) or not pid:
            self.add(expected, "pipeline id must be a non-empty string")
            return None
        if expected is not None and pid != expected:
            self.add(expected, f"subprocess pipeline id {pid!r} must equal the SubProcess id")
        if expected is None:
            self._register(pid)
            name = pipe.get("name")
            if isinstance(name, str) and (problem := limits.text_problem(name)):
                self.add(pid, f"pipeline name holds {problem}")  # kept in a column for listing
        return pid

    def _flows_of(self, flows: dict[Any, Any], graph: PipelineGraph) -> None:
        ids, edges = self._ids, graph.flows
        for key, flow in flows.items():
            # bamboo reads a flow by its key and never its "id": a flow without one is taken.
            if flow.__class__ is dict and key.__class__ is str and key and flow.get("id", key) == key and key not in ids:
                source, target = flow.get("source"), flow.get("target")
                if source.__class__ is str and target.__class__ is str:  # nearly every flow: nothing to report
                    ids.add(key)
                    edges[key] = (source, target)
                    continue
            if isinstance(flow, dict) and "id" not in flow and isinstance(key, str) and key:
                pass  # no "id": the key is the id
            elif not isinstance(flow, dict) or not isinstance(flow.get("id"), str) or not flow.get("id"):
                self.add(label(key), "flow must be a dict with a non-empty string id")
                graph.sound = False
                continue
            elif flow["id"] != key:
                self.add(label(key), f"flow key does not match its id {flow['id']!r}")
                graph.sound = False
                continue
            self._register(key, stored=False)
            source, target = flow.get("source"), flow.get("target")
            if not isinstance(source, str) or not isinstance(target, str):
                self.add(key, "flow source and target must be node id strings")
                graph.sound = False
                continue
            graph.flows[key] = (source, target)

    def _node_id(self, key: Any, node: Any, what: str, where: str | None = None) -> str | None:
        if not isinstance(node, dict):
            self.add(where or label(key), f"{what} must be a dict")
            return None
        nid = node.get("id")
        if not isinstance(nid, str) or not nid:
            self.add(where or label(key), f"{what} id must be a non-empty string")
            return None
        if key is not None and nid != key:
            self.add(where or label(key), f"{what} key does not match its id {nid!r}")
            return None
        self._register(nid)
        return nid

    def _add_node(self, graph: PipelineGraph, nid: str, kind: str, node: dict[str, Any]) -> None:
        graph.kinds[nid] = kind
        graph.declared_in[nid] = node.get("incoming")
        graph.declared_out[nid] = node.get("outgoing")

    # -- nodes ---------------------------------------------------------------------------------

    def _start_event(self, node: Any, graph: PipelineGraph, prefix: str) -> None:
        nid = self._node_id(None, node, "start_event", f"{prefix}start_event")
        if nid is None:
            graph.sound = False
            return
        if node.get("type") != START:
            self.add(nid, f"start event type must be {START!r}")
        self._add_node(graph, nid, START, node)
        graph.start_id = nid

    def _end_event(self, node: Any, graph: PipelineGraph, prefix: str) -> None:
        nid = self._node_id(None, node, "end_event", f"{prefix}end_event")
        if nid is None:
            graph.sound = False
            return
        kind = node.get("type")
        if not isinstance(kind, str) or not kind:
            self.add(nid, "end event type must be a non-empty string")
        elif kind != PLAIN_END and not self._ask(nid, f"end event {kind!r}", self.end_event_exists, kind):
            self.add(nid, f"end event type {kind!r} is not a registered executable end event (define an "
                          f"ExecutableEndEvent with code = {kind!r}, or register one with "
                          f"FlowNodeClsFactory.register_node({kind!r}, cls))")
        self._add_node(graph, nid, END, node)
        graph.end_id = nid

    def _activity(
        self, key: Any, node: Any, graph: PipelineGraph, activity_ids: set[str], depth: int
    ) -> list[_Pending]:
        nid = self._node_id(key, node, "activity")
        if nid is None:
            graph.sound = False
            return []
        kind = node.get("type")
        if not isinstance(kind, str) or kind not in ACTIVITY_TYPES:
            self.add(nid, f"activity type {kind!r} must be one of {sorted(ACTIVITY_TYPES)}")
            graph.sound = False
            return []
        self._add_node(graph, nid, kind, node)
        if kind == SUBPROCESS:
            return self._subprocess(nid, node, activity_ids, depth)
        self._service_activity(nid, node, activity_ids)
        return []

    def _service_activity(self, nid: str, node: dict[str, Any], activity_ids: set[str]) -> None:
        for flag in ACTIVITY_FLAGS:
            if node.get(flag, False).__class__ is not bool:  # bool has no subclasses
                self.add(nid, f"{flag} must be a bool")
        timeout = node.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0):
            self.add(nid, "timeout must be a non-negative number or null")
        self._component(nid, node.get("component"), activity_ids)
        if node.get("loop_config") is not None:
            self._loop_config(nid, node["loop_config"])
        if node.get("timeout_config") is not None:
            for problem in timeouts.config_problems(node["timeout_config"]):
                self.add(nid, problem)
        if node.get("events") is not None and not isinstance(node["events"], dict):
            self.add(nid, "events must be a dict")

    def _component(self, nid: str, component: Any, activity_ids: set[str]) -> None:
        if not isinstance(component, dict):
            self.add(nid, "ServiceActivity needs a 'component' dict")
            return
        code, version = component.get("code"), component.get("version")
        if version is not None and not isinstance(version, str):
            self.add(nid, "component version must be a string")
            version = None
        if not isinstance(code, str) or not code:
            self.add(nid, "component code must be a non-empty string")
        elif self.component_exists is not None and not self._ask(
                nid, f"component {code!r}", self.component_exists, code, version):
            shown = f"{code!r} version {version!r}" if version else repr(code)
            self.add(nid, f"component {shown} is not registered")
        self._vars(nid, component.get("inputs"), "component input", activity_ids, keyed_where=False)

    def _loop_config(self, nid: str, config: Any) -> None:
        if not isinstance(config, dict):
            self.add(nid, "loop_config must be a dict")
            return
        for flag in LOOP_FLAGS:
            if flag in config and not isinstance(config[flag], bool):
                self.add(nid, f"loop_config.{flag} must be a bool")
        if config.get("enable") is True and (problem := limits.loop_times_problem(config.get("loop_times"), least=1)):
            self.add(nid, f"loop_config.loop_times {problem} when the loop is enabled")
        key = config.get("outputs_key")
        if key is not None and (not isinstance(key, str) or not key):
            self.add(nid, "loop_config.outputs_key must be a non-empty string")
        elif key is not None:
            self._key(nid, "loop_config.outputs_key", key, limits.KEY_LENGTH)

    def _subprocess(self, nid: str, node: dict[str, Any], activity_ids: set[str], depth: int) -> list[_Pending]:
        self._vars(nid, node.get("params"), "param", activity_ids, keyed_where=False)
        self._subprocesses.append((nid, node))
        if depth + 1 > MAX_DEPTH:
            self.add(nid, f"subprocesses are nested more than {MAX_DEPTH} levels deep")
            return []
        if "pipeline" not in node:
            self.add(nid, "SubProcess needs a 'pipeline' tree")
            return []
        return [_Pending(node["pipeline"], nid, depth + 1)]

    def _gateway(self, key: Any, node: Any, graph: PipelineGraph, out_by_node: dict[str, set[str]]) -> None:
        nid = self._node_id(key, node, "gateway")
        if nid is None:
            graph.sound = False
            return
        kind = node.get("type")
        if not isinstance(kind, str) or kind not in GATEWAY_TYPES:
            self.add(nid, f"gateway type {kind!r} must be one of {sorted(GATEWAY_TYPES)}")
            graph.sound = False
            return
        self._add_node(graph, nid, kind, node)
        if kind in CONDITIONAL_TYPES:
            self._conditions(nid, node, out_by_node.get(nid, set()))
        if node.get("extra_info") is not None and not isinstance(node["extra_info"], dict):
            self.add(nid, "extra_info must be a dict")

    def _conditions(self, nid: str, node: dict[str, Any], outgoing: set[str]) -> None:
        conditions = node.get("conditions")
        if conditions is None:
            conditions = {}
        if not isinstance(conditions, dict):
            self.add(nid, "conditions must be a dict keyed by outgoing flow id")
            conditions = {}
        texts = [c.get("evaluate") for c in conditions.values() if isinstance(c, dict)]
        count = sum(template.fragment_count(t) for t in texts if isinstance(t, str))
        if problem := template.too_many_fragments(count, "the templates of its conditions"):
            self.add(nid, problem)
        for flow_id, condition in conditions.items():
            if flow_id not in outgoing:
                self.add(nid, f"condition key {label(flow_id)} is not an outgoing flow of this gateway")
            if not isinstance(condition, dict) or not isinstance(condition.get("evaluate"), str):
                self.add(nid, f"condition of flow {label(flow_id)} must be a dict with an 'evaluate' string")
        default_flow = self._default_flow(nid, node.get("default_condition"), outgoing)
        for flow_id in sorted(outgoing - set(conditions) - {default_flow}):
            self.add(nid, f"outgoing flow {flow_id} has no condition")

    def _default_flow(self, nid: str, default: Any, outgoing: set[str]) -> str | None:
        if default is None or default == {}:
            return None
        flow_id = default.get("flow_id") if isinstance(default, dict) else None
        if not isinstance(flow_id, str) or flow_id not in outgoing:
            self.add(nid, "default_condition.flow_id must be an outgoing flow of this gateway")
            return None
        return flow_id

    # -- data and variables --------------------------------------------------------------------

    def _data(self, data: Any, where: str, activity_ids: set[str]) -> None:
        if data is None:
            return
        if not isinstance(data, dict):
            self.add(where, "data must be a dict")
            return
        self._vars(f"{where}.inputs", data.get("inputs"), "data input", activity_ids, keyed_where=True)
        outputs = data.get("outputs")
        if isinstance(outputs, dict):
            ok = all(isinstance(k, str) and isinstance(v, str) for k, v in outputs.items())
        else:
            ok = outputs is None or (isinstance(outputs, list) and all(isinstance(k, str) for k in outputs))
        if not ok:
            self.add(f"{where}.outputs", "data outputs must be a list of context keys")
        keys = data.get("pre_render_keys")
        if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            self.add(f"{where}.pre_render_keys", "pre_render_keys must be a list of context keys")

    def _vars(self, where: str, variables: Any, what: str, activity_ids: set[str], keyed_where: bool) -> None:
        """Check a ``{key: Var}`` dict; ``keyed_where`` puts the key into each problem's where."""
        if variables is None:
            return
        if not isinstance(variables, dict):
            self.add(where, f"{what}s must be a dict of variables")
            return
        # Keys of data inputs and params become context keys, kept in a column of their own.
        width = limits.KEY_LENGTH if what in _CONTEXT_KEYED else None
        longest = width if width is not None else 1 << 30
        fragments = 0  # "${" of the rendered variables
        forms: dict[str, str] | None = None  # NFKC form -> key, of the keys not in that form
        for key, var in variables.items():
            if not isinstance(key, str):
                self.add(where, f"{what} key {key!r} must be a string")
                continue
            if len(key) > longest or "\x00" in key or not key.isascii():  # the common case costs no call
                self._key(where, what, key, width)
                if what in _CONTEXT_KEYED and not key.isascii():
                    self._non_ascii_context_keys = True
                    forms = self._form(where, what, key, variables, forms)
            if var.__class__ is dict and len(var) == 2 and var.get("type") in _PLAIN_OR_SPLICE and "value" in var:
                # {"type", "value"} of a plain or splice variable: only its value may be wrong
                value = var["value"]
                if var["type"] == "splice":
                    self.referring_variables = self.referring_variables or what not in _NODE_INPUTS
                    count = value.count("${") if value.__class__ is str else template.fragment_count(value)
                    fragments += count if count <= template.MAX_NODE_FRAGMENTS else self._fragments(where, what, key, value)
                if isinstance(value, _CONTAINERS):
                    self._value(f"{where}.{label_text(key)}" if keyed_where else where, f"{what} {key!r}", value)
                continue
            at = f"{where}.{label_text(key)}" if keyed_where else where
            self._var(at, f"{what} {key!r}", var, activity_ids)
            if isinstance(var, dict) and var.get("type") in (_REFERRING if what not in _NODE_INPUTS else ("lazy",)):
                self.referring_variables = True
            if isinstance(var, dict) and var.get("type", "plain") != "plain" and var.get("need_render") is not False:
                fragments += self._fragments(where, what, key, var.get("value"))
            if what in _NODE_INPUTS and isinstance(var, dict) and var.get("type") == "lazy":
                # A lazy input becomes a context variable of its own, keyed by input and node.
                if problem := limits.column_problem(lazy_input_key(key, where), limits.KEY_LENGTH):
                    self.add(where, f"{what} {key!r} is lazy: its context key {problem}")
        if what not in _NODE_INPUTS:
            self.variable_fragments += fragments
        elif fragments > template.MAX_NODE_FRAGMENTS:
            self.add(where, template.too_many_fragments(fragments, f"the templates of its {what}s") or "")

    def _fragments(self, where: str, what: str, key: str, value: Any) -> int:
        """The ``${`` of one rendered variable's value; a data input over the limit is a problem."""
        count = value.count("${") if value.__class__ is str else template.fragment_count(value)
        if count > template.MAX_NODE_FRAGMENTS and what not in _NODE_INPUTS:
            self.add(where, template.too_many_fragments(count, f"the templates of {what} {label(key)}") or "")
        return count

    def _var(self, where: str, what: str, var: Any, activity_ids: set[str]) -> None:
        if not isinstance(var, dict):
            self.add(where, f"{what} must be a dict with 'type' and 'value'")
            return
        kind = var.get("type")
        self._value(where, what, var.get("value"))
        if kind not in VAR_TYPES:
            self.add(where, f"{what} has type {kind!r}; expected one of {', '.join(VAR_TYPES)}")
        if "value" not in var and "source_act" not in var:
            self.add(where, f"{what} has no 'value'")
        for flag in VAR_FLAGS:
            if flag in var and not isinstance(var[flag], bool):
                self.add(where, f"{what}: {flag} must be a bool")
        if kind == "lazy":
            self._lazy(where, what, var.get("custom_type"))
        if "source_act" in var:
            self._source(where, what, var, activity_ids)

    def _lazy(self, where: str, what: str, custom_type: Any) -> None:
        if not isinstance(custom_type, str) or not custom_type:
            self.add(where, f"{what} is lazy and needs a custom_type string")
        elif not self._ask(where, f"lazy variable {custom_type!r}", self.lazy_exists, custom_type):
            self.add(where, f"{what} uses unknown lazy variable type {custom_type!r}")
        elif problem := limits.column_problem(custom_type, limits.KEY_LENGTH):
            self.add(where, f"{what}: custom_type {problem}")

    def _source(self, where: str, what: str, var: dict[str, Any], activity_ids: set[str]) -> None:
        source = var["source_act"]
        if isinstance(source, str):
            refs: list[Any] = [{"source_act": source, "source_key": var.get("source_key")}]
        elif isinstance(source, list):
            refs = source
        else:
            self.add(where, f"{what}: source_act must be an activity id or a list of references")
            return
        for ref in refs:
            act = ref.get("source_act") if isinstance(ref, dict) else None
            if not isinstance(act, str) or not isinstance(ref.get("source_key"), str):
                self.add(where, f"{what}: each output reference needs string source_act and source_key")
            elif act not in activity_ids:
                self.add(where, f"{what} refers to {act!r}, which is not an activity of this pipeline")
