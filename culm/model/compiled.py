"""The compiled, immutable graph the engine walks (built once per pipeline tree)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from culm.model.timeouts import NodeTimeout, node_timeout

START = "EmptyStartEvent"
END = "EmptyEndEvent"
ACTIVITY = "ServiceActivity"
SUBPROCESS = "SubProcess"
PARALLEL = "ParallelGateway"
EXCLUSIVE = "ExclusiveGateway"
CONDITIONAL_PARALLEL = "ConditionalParallelGateway"
CONVERGE = "ConvergeGateway"
EXECUTABLE_END = "ExecutableEndEvent"  # any end event whose type is not EmptyEndEvent


_WALK_STOPS = (ACTIVITY, PARALLEL, CONDITIONAL_PARALLEL)


@dataclass(frozen=True, slots=True)
class Condition:
    """One outgoing branch of an exclusive or conditional-parallel gateway."""

    flow_id: str
    target_id: str
    evaluate: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Node:
    """A node of a (sub)pipeline with everything the engine needs to run it."""

    id: str
    type: str
    name: str | None
    pipeline_id: str
    flows: tuple[str, ...]
    targets: tuple[str, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)
    converge_gateway_id: str | None = None
    conditions: tuple[Condition, ...] = ()
    default: Condition | None = None
    end_code: str | None = None
    timeout: NodeTimeout | None = None  # an activity's enabled timeout_config

    @property
    def target(self) -> str | None:
        return self.targets[0] if self.targets else None

    @property
    def code(self) -> str:
        return str((self.raw.get("component") or {}).get("code", ""))

    @property
    def version(self) -> str | None:
        return (self.raw.get("component") or {}).get("version") or None

    @property
    def error_ignorable(self) -> bool:
        return bool(self.raw.get("error_ignorable", False))

    @property
    def can_skip(self) -> bool:
        if self.type == ACTIVITY:
            return bool(self.raw.get("skippable", self.raw.get("isSkipped", True)))
        return self.type in (START, EXCLUSIVE)

    @property
    def can_retry(self) -> bool:
        if self.type == ACTIVITY:
            return bool(self.raw.get("retryable", self.raw.get("can_retry", True)))
        return True

    @property
    def loop_config(self) -> dict[str, Any] | None:
        cfg = self.raw.get("loop_config")
        return cfg if isinstance(cfg, dict) and cfg.get("enable") else None

    def target_of_flow(self, flow_id: str) -> str | None:
        for f, t in zip(self.flows, self.targets, strict=False):
            if f == flow_id:
                return t
        return None


# The frozen dataclass's __init__ sets each of Node's 12 fields through object.__setattr__ (a
# lookup and a generic call per field: ~8 k instructions a node, half of compiling a tree).
# compile_tree builds its nodes by setting the slots directly; the result is the same Node.
_NODE_FIELDS = tuple(f.name for f in fields(Node))
assert _NODE_FIELDS == ("id", "type", "name", "pipeline_id", "flows", "targets", "raw", "converge_gateway_id",
                        "conditions", "default", "end_code", "timeout"), "update _node to Node's fields"
(_set_id, _set_type, _set_name, _set_pipeline, _set_flows, _set_targets, _set_raw, _set_converge, _set_conditions,
 _set_default, _set_end_code, _set_timeout) = (getattr(Node, name).__set__ for name in _NODE_FIELDS)


def _node(node_id: str, node_type: str, name: str | None, pipeline_id: str, flows: tuple[str, ...],
          targets: tuple[str, ...], raw: dict[str, Any], converge_gateway_id: str | None,
          conditions: tuple[Condition, ...], default: Condition | None, end_code: str | None,
          timeout: NodeTimeout | None) -> Node:
    """``Node(...)`` with these fields, in its order, without the frozen dataclass's __init__."""
    node: Node = object.__new__(Node)
    _set_id(node, node_id)
    _set_type(node, node_type)
    _set_name(node, name)
    _set_pipeline(node, pipeline_id)
    _set_flows(node, flows)
    _set_targets(node, targets)
    _set_raw(node, raw)
    _set_converge(node, converge_gateway_id)
    _set_conditions(node, conditions)
    _set_default(node, default)
    _set_end_code(node, end_code)
    _set_timeout(node, timeout)
    return node


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    """A root pipeline or a subprocess body."""

    id: str
    parent_pipeline_id: str | None
    start_event_id: str
    end_event_id: str
    inputs: dict[str, Any]
    outputs: tuple[str, ...]
    pre_render_keys: tuple[str, ...]
    # node id -> ((source_key, context_key), ...): where a node's outputs land in this context
    output_map: dict[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class Graph:
    """All nodes of a root pipeline and its subprocesses, by id."""

    root_id: str
    nodes: dict[str, Node]
    pipelines: dict[str, PipelineSpec]
    timed: frozenset[str] = frozenset()  # the activities with an enabled timeout
    forks: frozenset[str] = frozenset()  # the gateways that start child processes (parallel, conditional parallel)
    _ahead: dict[tuple[str, int], list[str]] = field(default_factory=dict, repr=False, compare=False)

    def node(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def ahead(self, node_id: str, limit: int = 32) -> list[str]:
        """``node_id`` and the nodes one walk from it may enter before it has to stop: through
        events, exclusive and converge gateways and into and out of subprocesses, up to the next
        activities and forking gateways (their branches are other processes). At most ``limit``.
        Computed once per node (the graph never changes)."""
        known = self._ahead.get((node_id, limit))
        if known is None:
            known = self._ahead[(node_id, limit)] = self._walk_ahead(node_id, limit)
        return known

    def ahead_of_resume(self, node_id: str) -> list[str]:
        """``ahead`` for a walk that resumes at ``node_id`` after its user code ran: the node and
        what the walk may enter once it is done."""
        node = self.nodes.get(node_id)
        if node is None or node.type not in _WALK_STOPS:
            return self.ahead(node_id)
        return [node_id, *(n for target in node.targets for n in self.ahead(target))]

    def _walk_ahead(self, node_id: str, limit: int) -> list[str]:
        found = [node_id]
        seen = {node_id}
        i = 0
        while i < len(found) and len(found) < limit:
            node = self.nodes.get(found[i])
            i += 1
            if node is None or node.type in _WALK_STOPS:
                continue  # user code runs next, or the branches are other processes
            if node.type == SUBPROCESS:
                nexts: tuple[str, ...] = (self.pipelines[node.id].start_event_id,)
            elif node.type in (END, EXECUTABLE_END) and node.pipeline_id != self.root_id:
                nexts = self.nodes[node.pipeline_id].targets  # leaves the subprocess
            else:
                nexts = node.targets
            for n in nexts:
                if n not in seen and len(found) < limit:
                    seen.add(n)
                    found.append(n)
        return found


def a_type(node_type: str) -> str:
    """``node_type`` with its article, for messages: "an EmptyStartEvent", "a ServiceActivity"."""
    return f"{'an' if node_type[:1] in 'AEIOU' else 'a'} {node_type}"


def _as_list(value: Any) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def _output_map(inputs: dict[str, Any]) -> dict[str, tuple[tuple[str, str], ...]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for key, var in inputs.items():
        if not isinstance(var, dict) or not var.get("source_act"):
            continue
        src = var["source_act"]
        if isinstance(src, str):
            out.setdefault(src, []).append((var.get("source_key", ""), key))
        else:
            for item in src:
                out.setdefault(item["source_act"], []).append((item["source_key"], key))
    return {k: tuple(v) for k, v in out.items()}


def _conditions(raw: dict[str, Any], flows: dict[str, Any]) -> tuple[tuple[Condition, ...], Condition | None]:
    default_flow = (raw.get("default_condition") or {}).get("flow_id")
    conds = []
    for flow_id, cond in (raw.get("conditions") or {}).items():
        if flow_id == default_flow:
            continue
        conds.append(Condition(flow_id, flows[flow_id]["target"], cond.get("evaluate", ""), cond.get("name")))
    default = None
    if default_flow:
        name = (raw.get("default_condition") or {}).get("name")
        default = Condition(default_flow, flows[default_flow]["target"], "", name)
    return tuple(conds), default


def compile_tree(tree: dict[str, Any]) -> Graph:
    """Compile a validated, normalised tree (see :func:`culm.model.validator.process_tree`)."""
    nodes: dict[str, Node] = {}
    pipelines: dict[str, PipelineSpec] = {}
    pending: list[tuple[dict[str, Any], str | None]] = [(tree, None)]
    timed: list[str] = []
    while pending:
        pipe, parent = pending.pop()
        _compile_one(pipe, parent, nodes, pipelines, pending, timed)
    forks = frozenset(node_id for node_id, node in nodes.items() if node.type in (PARALLEL, CONDITIONAL_PARALLEL))
    return Graph(tree["id"], nodes, pipelines, frozenset(timed), forks)


def _compile_one(pipe: dict[str, Any], parent: str | None, nodes: dict[str, Node], pipelines: dict[str, PipelineSpec],
                 pending: list[tuple[dict[str, Any], str | None]], timed: list[str]) -> None:
    pid = pipe["id"]
    flows = pipe.get("flows", {})
    data = pipe.get("data") or {}
    inputs = data.get("inputs") or {}
    outputs = data.get("outputs") or []
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    pipelines[pid] = PipelineSpec(
        id=pid, parent_pipeline_id=parent, start_event_id=pipe["start_event"]["id"],
        end_event_id=pipe["end_event"]["id"], inputs=inputs, outputs=tuple(outputs),
        pre_render_keys=tuple(data.get("pre_render_keys") or ()), output_map=_output_map(inputs),
    )
    end_event = pipe["end_event"]
    raw_nodes = [pipe["start_event"], end_event, *pipe.get("activities", {}).values()]
    raw_nodes.extend(pipe.get("gateways", {}).values())
    for raw in raw_nodes:
        out = raw.get("outgoing")
        if out.__class__ is str and out:  # most nodes have one outgoing flow
            flow_ids: tuple[str, ...] = (out,)
            targets: tuple[str, ...] = (flows[out]["target"],)
        else:
            flow_ids = tuple(_as_list(out))
            targets = tuple([flows[f]["target"] for f in flow_ids])
        ntype = raw["type"]
        end_code = None
        if raw is end_event and ntype != END:
            end_code, ntype = ntype, EXECUTABLE_END
        conds: tuple[Condition, ...] = ()
        default = None
        if ntype in (EXCLUSIVE, CONDITIONAL_PARALLEL):
            conds, default = _conditions(raw, flows)
        timeout = None
        if "timeout_config" in raw and ntype == ACTIVITY:
            timeout = node_timeout(raw)
            if timeout is not None:
                timed.append(raw["id"])
        nodes[raw["id"]] = _node(raw["id"], ntype, raw.get("name"), pid, flow_ids, targets, raw,
                                 raw.get("converge_gateway_id"), conds, default, end_code, timeout)
        if ntype == SUBPROCESS:
            pending.append((raw["pipeline"], pid))
