"""The flow graph of one (sub)pipeline as the validator sees it, and its connection rules.

:class:`PipelineGraph` is filled by the shape checks (:mod:`culm.model.tree_shape`) with the nodes
and flows that are well formed; :func:`check_connections` then checks that flows and nodes agree,
the degree rules, reachability and cycles. Every algorithm here is iterative so that long
chains never hit the recursion limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

START = "EmptyStartEvent"
END = "EndEvent"  # the kind of any end event, plain or executable
SERVICE = "ServiceActivity"
SUBPROCESS = "SubProcess"
PARALLEL = "ParallelGateway"
EXCLUSIVE = "ExclusiveGateway"
CONDITIONAL_PARALLEL = "ConditionalParallelGateway"
CONVERGE = "ConvergeGateway"

ACTIVITY_TYPES = frozenset({SERVICE, SUBPROCESS})
GATEWAY_TYPES = frozenset({PARALLEL, EXCLUSIVE, CONDITIONAL_PARALLEL, CONVERGE})
BRANCHING_TYPES = frozenset({PARALLEL, EXCLUSIVE, CONDITIONAL_PARALLEL})
CONDITIONAL_TYPES = frozenset({EXCLUSIVE, CONDITIONAL_PARALLEL})
PARALLEL_TYPES = frozenset({PARALLEL, CONDITIONAL_PARALLEL})
SINGLE_OUT_TYPES = frozenset({START, SERVICE, SUBPROCESS, CONVERGE})

MAX_DEGREE = 1000

AddProblem = Callable[[str | None, str], None]


@dataclass
class PipelineGraph:
    """Nodes and flows of one pipeline, plus what the checks computed about them."""

    id: str
    start_id: str | None = None
    end_id: str | None = None
    kinds: dict[str, str] = field(default_factory=dict)
    declared_in: dict[str, Any] = field(default_factory=dict)
    declared_out: dict[str, Any] = field(default_factory=dict)
    flows: dict[str, tuple[str, str]] = field(default_factory=dict)
    out_flows: dict[str, list[str]] = field(default_factory=dict)
    in_flows: dict[str, list[str]] = field(default_factory=dict)
    reachable: set[str] = field(default_factory=set)
    postorder: list[str] = field(default_factory=list)
    back_flows: set[str] = field(default_factory=set)
    converge_of: dict[str, str] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)  # flows naming a node that does not exist
    sound: bool = True  # False once a problem makes gateway pairing meaningless

    def target(self, flow_id: str) -> str:
        """The node a flow leads to."""
        return self.flows[flow_id][1]

    def forward_out(self, node_id: str) -> Sequence[str]:
        """Outgoing flows of a node that are not loop-back flows (do not modify the result)."""
        outs = self.out_flows.get(node_id, ())
        if not self.back_flows:
            return outs
        return [f for f in outs if f not in self.back_flows]


def check_connections(graph: PipelineGraph, add: AddProblem, cycle_tolerate: bool) -> None:
    """Check flows against nodes, degrees, reachability and cycles; fill the computed fields."""
    _drop_dangling_flows(graph, add)
    _index_flows(graph)
    # A flow dropped for a mistyped end is reported once: the nodes it touched are not blamed again
    # for the flow it lacks (declared lists, degrees), nor is anything for being cut off by it.
    _check_nodes(graph, _touched_by(graph, graph.dropped), add)
    _check_targets(graph, add)
    if graph.start_id is None:
        graph.sound = False
        return
    _depth_first(graph)
    for node_id in graph.kinds:
        if node_id not in graph.reachable and not graph.dropped:
            add(node_id, "node is isolated: it cannot be reached from the start event")
    if graph.back_flows and not cycle_tolerate:
        graph.sound = False
        for node_id in dict.fromkeys(graph.target(f) for f in sorted(graph.back_flows)):
            add(node_id, "node is on a cycle; pass cycle_tolerate=True to allow loops")


def _drop_dangling_flows(graph: PipelineGraph, add: AddProblem) -> None:
    for flow_id, (source, target) in list(graph.flows.items()):
        bad = [end for end in (source, target) if end not in graph.kinds]
        for end in bad:
            add(flow_id, f"flow refers to {end!r}, which is not a node of pipeline {graph.id}")
        if bad:
            del graph.flows[flow_id]
            graph.dropped.add(flow_id)
            graph.sound = False


def _touched_by(graph: PipelineGraph, flows: set[str]) -> set[str]:
    """The nodes whose declared incoming or outgoing names one of ``flows``."""
    if not flows:
        return set()
    touched = set()
    for node_id in graph.kinds:
        for value in (graph.declared_in.get(node_id), graph.declared_out.get(node_id)):
            declared = _as_flow_list(value) or []
            if any(isinstance(f, str) and f in flows for f in declared):
                touched.add(node_id)
    return touched


def _index_flows(graph: PipelineGraph) -> None:
    graph.out_flows = {node_id: [] for node_id in graph.kinds}
    graph.in_flows = {node_id: [] for node_id in graph.kinds}
    for flow_id, (source, target) in graph.flows.items():
        graph.out_flows[source].append(flow_id)
        graph.in_flows[target].append(flow_id)


def _check_nodes(graph: PipelineGraph, excused: set[str], add: AddProblem) -> None:
    """:func:`_check_declared` and :func:`_check_degree` of every node not ``excused``."""
    in_flows, out_flows, declared_in, declared_out = graph.in_flows, graph.out_flows, graph.declared_in, graph.declared_out
    for node_id, kind in graph.kinds.items():
        if node_id in excused:
            continue
        ins, outs, out_value = in_flows[node_id], out_flows[node_id], declared_out[node_id]
        min_in, max_in, min_out, max_out = _DEGREE_RULES[kind]
        if (min_in <= len(ins) <= max_in and min_out <= len(outs) <= max_out
                and (out_value.__class__ is list) == (kind in BRANCHING_TYPES)
                and _names_exactly(declared_in[node_id], ins) and _names_exactly(out_value, outs)):
            continue  # nearly every node: nothing to report, decided without building anything
        _check_declared(graph, node_id, add)
        _check_degree(graph, node_id, add)


def _names_exactly(value: Any, actual: list[str]) -> bool:
    """Whether a declared incoming/outgoing names ``actual`` in a way :func:`_check_declared`
    accepts without looking further (False says only: let it look)."""
    if value.__class__ is str:
        return actual[0] == value if len(actual) == 1 else not (value or actual)
    return value.__class__ is list and value == actual


def _as_flow_list(value: Any) -> list[Any] | None:
    """A declared incoming/outgoing value as a list; None when it is not a str or list."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return value
    return None


def _check_declared(graph: PipelineGraph, node_id: str, add: AddProblem) -> None:
    """The node's own ``incoming``/``outgoing`` must name exactly the flows that touch it."""
    kind = graph.kinds[node_id]
    out_value = graph.declared_out.get(node_id)
    if kind in BRANCHING_TYPES and not isinstance(out_value, list):
        add(node_id, f"outgoing of a {kind} must be a list of flow ids")
        graph.sound = False
    elif kind not in BRANCHING_TYPES and isinstance(out_value, list):
        add(node_id, f"outgoing of a {kind} must be a single flow id string")
        graph.sound = False
    for label, value, actual in (
        ("incoming", graph.declared_in.get(node_id), graph.in_flows[node_id]),
        ("outgoing", out_value, graph.out_flows[node_id]),
    ):
        if value.__class__ is str and len(actual) == 1 and actual[0] == value:
            continue  # the common cases, decided without building sets
        if value.__class__ is list and value == actual:
            continue  # flow ids are distinct strings, so an equal list has no duplicates either
        declared = _as_flow_list(value)
        if declared is None or not all(isinstance(f, str) for f in declared):
            add(node_id, f"{label} must be a flow id string or a list of flow id strings")
            graph.sound = False
        elif len(set(declared)) != len(declared) or set(declared) != set(actual):
            add(node_id, f"{label} lists {sorted(declared)} but the flows are {sorted(actual)}")
            graph.sound = False


_DEGREE_RULES: dict[str, tuple[int, int, int, int]] = {
    # kind: (min in, max in, min out, max out)
    START: (0, 0, 1, 1),
    END: (1, MAX_DEGREE, 0, 0),
    SERVICE: (1, MAX_DEGREE, 1, 1),
    SUBPROCESS: (1, MAX_DEGREE, 1, 1),
    PARALLEL: (1, MAX_DEGREE, 1, MAX_DEGREE),
    EXCLUSIVE: (1, MAX_DEGREE, 1, MAX_DEGREE),
    CONDITIONAL_PARALLEL: (1, MAX_DEGREE, 1, MAX_DEGREE),
    CONVERGE: (1, MAX_DEGREE, 1, 1),
}


def _check_degree(graph: PipelineGraph, node_id: str, add: AddProblem) -> None:
    min_in, max_in, min_out, max_out = _DEGREE_RULES[graph.kinds[node_id]]
    kind = graph.kinds[node_id]
    for label, count, low, high in (
        ("incoming", len(graph.in_flows[node_id]), min_in, max_in),
        ("outgoing", len(graph.out_flows[node_id]), min_out, max_out),
    ):
        if not low <= count <= high:
            wanted = str(low) if low == high else f"{low} to {high}"
            add(node_id, f"a {kind} needs {wanted} {label} flow(s), it has {count}")
            graph.sound = False


def _check_targets(graph: PipelineGraph, add: AddProblem) -> None:
    for flow_id, (source, target) in graph.flows.items():
        if graph.kinds[target] == START:
            add(flow_id, "no flow may lead to the start event")
            graph.sound = False
        elif graph.kinds[source] == START and graph.kinds[target] == END:
            add(flow_id, "the start event may not lead straight to the end event")
            graph.sound = False


def _depth_first(graph: PipelineGraph) -> None:
    """Iterative DFS from the start: reachable set, postorder, and loop-back flows.

    A flow to a node still on the DFS stack closes a cycle; calling those flows "back" flows
    and ignoring them leaves a DAG whose postorder lists every node after all its successors.
    """
    start = graph.start_id
    assert start is not None
    on_stack = {start}
    reachable = graph.reachable = {start}
    out_flows, flows, postorder, back_flows = graph.out_flows, graph.flows, graph.postorder, graph.back_flows
    stack: list[tuple[str, int]] = [(start, 0)]
    while stack:
        node_id, index = stack[-1]
        outs = out_flows[node_id]
        if index == len(outs):
            stack.pop()
            on_stack.discard(node_id)
            postorder.append(node_id)
            continue
        stack[-1] = (node_id, index + 1)
        flow_id = outs[index]
        nxt = flows[flow_id][1]
        if nxt in on_stack:
            back_flows.add(flow_id)
        elif nxt not in reachable:
            reachable.add(nxt)
            on_stack.add(nxt)
            stack.append((nxt, 0))
