"""Gateway <-> converge pairing and the stream check, on a graph that passed the connection checks.

Pairing works on the DAG left after dropping loop-back flows. For every node, in reverse
topological order, it computes a :class:`Reach`: where a walk starting at that node stops.
A walk runs through activities, through a nested gateway (continuing after the gateway's
converge when that gateway's branches fill every forward input of it) and stops at a converge
gateway, at the end event, or at a loop-back flow. A branching gateway's converge is where its
branches stop; each node is computed once, so the whole pass is linear.

The stream check then gives every node one "stream" (the main line, or branch *i* of parallel
gateway *G*) and reports nodes reached from two streams.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import count

from culm.model.flowgraph import (
    CONVERGE,
    END,
    EXCLUSIVE,
    PARALLEL_TYPES,
    SERVICE,
    START,
    SUBPROCESS,
    AddProblem,
    PipelineGraph,
)

STOP, FINISH, LOOP, BROKEN = "stop", "finish", "loop", "broken"


@dataclass(frozen=True, slots=True)
class Reach:
    """Where a walk stops: at ``converge`` (bringing ``flows`` of its inputs), the end, or a loop.

    ``leak`` names an exclusive gateway passed on the way that has a branch running to the end
    event; inside a parallel block that is an error.
    """

    kind: str
    converge: str | None = None
    flows: int = 0
    leak: str | None = None


_FINISH, _LOOP, _BROKEN = Reach(FINISH), Reach(LOOP), Reach(BROKEN)
_WALKED_THROUGH = frozenset({START, SERVICE, SUBPROCESS})  # one way out, nothing to pair


class _Pairing:
    def __init__(self, graph: PipelineGraph, add: AddProblem) -> None:
        self.graph = graph
        self.add = add
        self.reach: dict[str, Reach] = {}
        self.forward_in: dict[str, int] = dict.fromkeys(graph.reachable, 0)
        self.loop_targets: set[str] = set()
        for flow_id, (source, target) in graph.flows.items():
            if source not in graph.reachable:
                continue
            if flow_id in graph.back_flows:
                self.loop_targets.add(target)
            else:
                self.forward_in[target] += 1

    def run(self) -> None:
        reach, reach_of = self.reach, self._reach_of
        for node_id in self.graph.postorder:
            reach[node_id] = reach_of(node_id)
        self._check_main_line()

    def _follow(self, node_id: str) -> Reach:
        """Where the walk goes after a single-successor node."""
        graph = self.graph
        forward = graph.forward_out(node_id)
        if forward:
            return self.reach[graph.flows[forward[0]][1]]
        return _LOOP if graph.out_flows[node_id] else _FINISH

    def _reach_of(self, node_id: str) -> Reach:
        kind = self.graph.kinds[node_id]
        if kind in _WALKED_THROUGH:
            return self._follow(node_id)
        if kind == END:
            return _FINISH
        if kind == CONVERGE:
            # A converge entered once going forward and again by loop-back flows is a loop head,
            # not the end of a block: walk through it.
            if self.forward_in[node_id] == 1 and node_id in self.loop_targets:
                return self._follow(node_id)
            return Reach(STOP, node_id, 1)
        if kind in PARALLEL_TYPES:
            return self._parallel(node_id)
        if kind == EXCLUSIVE:
            return self._exclusive(node_id)
        return self._follow(node_id)

    def _branches(self, gateway_id: str) -> list[Reach]:
        results = [self.reach[self.graph.target(f)] for f in self.graph.forward_out(gateway_id)]
        loops = len(self.graph.out_flows[gateway_id]) - len(results)
        return results + [_LOOP] * loops

    def _after(self, gateway_id: str, converge: str, flows: int, leak: str | None) -> Reach:
        """The walk once a gateway's branches stopped at ``converge``."""
        self.graph.converge_of[gateway_id] = converge
        if flows != self.forward_in[converge]:
            return Reach(STOP, converge, flows, leak)
        result = self._follow(converge)
        if leak is not None and result.kind == STOP and result.leak is None:
            result = replace(result, leak=leak)
        return result

    def _parallel(self, gateway_id: str) -> Reach:
        results = self._branches(gateway_id)
        if any(r.kind == BROKEN for r in results):
            return _BROKEN
        if any(r.kind != STOP for r in results):
            self.add(gateway_id, "every branch of a parallel gateway must reach its converge gateway")
            return _BROKEN
        converges = sorted({r.converge for r in results if r.converge})
        if len(converges) > 1:
            self.add(gateway_id, f"branches of the parallel gateway end at different converge gateways {converges}")
            return _BROKEN
        for leak in dict.fromkeys(r.leak for r in results if r.leak):
            self.add(leak, f"inside the parallel block of {gateway_id} every branch of this exclusive "
                           "gateway must reach a converge gateway")
        converge, flows = converges[0], sum(r.flows for r in results)
        if flows != self.forward_in[converge]:
            self.add(gateway_id, f"converge gateway {converge} also receives flows from outside this "
                                 "parallel gateway's branches")
            return _BROKEN
        if any(r.leak for r in results):
            return _BROKEN
        return self._after(gateway_id, converge, flows, None)

    def _exclusive(self, gateway_id: str) -> Reach:
        results = self._branches(gateway_id)
        if any(r.kind == BROKEN for r in results):
            return _BROKEN
        live = [r for r in results if r.kind == STOP]
        if not live:
            return _FINISH if any(r.kind == FINISH for r in results) else _LOOP
        converges = sorted({r.converge for r in live if r.converge})
        if len(converges) > 1:
            self.add(gateway_id, f"branches of the exclusive gateway meet at different converge gateways {converges}")
            return _BROKEN
        leak = gateway_id if any(r.kind == FINISH for r in results) else None
        leak = leak or next((r.leak for r in live if r.leak), None)
        return self._after(gateway_id, converges[0], sum(r.flows for r in live), leak)

    def _check_main_line(self) -> None:
        """Walk the main line; a converge it stops at must be fed by that walk alone."""
        assert self.graph.start_id is not None
        result = self.reach[self.graph.start_id]
        seen: set[str] = set()
        while result.kind == STOP and result.converge not in seen:
            converge = result.converge
            assert converge is not None
            seen.add(converge)
            if result.flows != self.forward_in[converge]:
                self.add(converge, "converge gateway joins flows that do not all come from one gateway's branches")
                return
            result = self._follow(converge)


def pair_gateways(graph: PipelineGraph, add: AddProblem) -> bool:
    """Fill ``graph.converge_of``; report unmatched gateways. Returns whether no problem was found."""
    before = [0]

    def counting_add(where: str | None, message: str) -> None:
        before[0] += 1
        add(where, message)

    _Pairing(graph, counting_add).run()
    return before[0] == 0


def check_streams(graph: PipelineGraph, add: AddProblem) -> None:
    """Report every node reachable from two streams (main line or parallel branches)."""
    parallel_of = {c: g for g, c in graph.converge_of.items() if graph.kinds[g] in PARALLEL_TYPES}
    owner: dict[int, tuple[str, int]] = {}  # branch stream -> (its parallel gateway, enclosing stream)
    new_stream = count(1)
    assert graph.start_id is not None
    stream = {graph.start_id: 0}
    clashed: set[str] = set()

    def clash(node_id: str, message: str) -> None:
        if node_id not in clashed:
            clashed.add(node_id)
            add(node_id, message)

    kinds, flows = graph.kinds, graph.flows
    for node_id in reversed(graph.postorder):
        current = stream.get(node_id)
        if current is None:  # only downstream of a node already reported
            continue
        forks = kinds[node_id] in PARALLEL_TYPES
        for flow_id in graph.forward_out(node_id):
            candidate = current
            if forks:
                candidate = next(new_stream)
                owner[candidate] = (node_id, current)
            target = flows[flow_id][1]
            if target in parallel_of:
                gateway, enclosing = owner.get(candidate, (None, candidate))
                if gateway != parallel_of[target]:
                    clash(target, f"converge gateway of {parallel_of[target]} receives a flow from outside its branches")
                    continue
                candidate = enclosing
            if stream.setdefault(target, candidate) != candidate:
                clash(target, "node is reached from more than one parallel branch or from both inside "
                              "and outside a parallel block")
    for flow_id in sorted(graph.back_flows):
        source, target = graph.flows[flow_id]
        if stream.get(source) != stream.get(target):
            clash(target, f"loop-back flow {flow_id} crosses the boundary of a parallel branch")
