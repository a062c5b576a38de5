"""Graph.ahead: the nodes one walk may enter before it stops (what the engine reads at once)."""

from __future__ import annotations

from culm.builder import (
    ConvergeGateway,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ParallelGateway,
    ServiceActivity,
    SubProcess,
    build_tree,
)
from culm.model.compiled import compile_tree


def test_walk_stops_at_the_next_activity():
    start, a, b, end = EmptyStartEvent(), ServiceActivity(component_code="x"), ServiceActivity(component_code="x"), \
        EmptyEndEvent()
    start.extend(a).extend(b).extend(end)
    graph = compile_tree(build_tree(start))
    assert graph.ahead(start.id) == [start.id, a.id]
    assert graph.ahead(a.id) == [a.id]  # user code runs next
    assert graph.ahead(end.id) == [end.id]


def test_walk_goes_through_both_branches_of_an_exclusive_gateway_and_stops_at_a_fork():
    start, eg, cg, pg, end = EmptyStartEvent(), ExclusiveGateway(conditions={0: "1 == 1", 1: "1 == 2"}), \
        ConvergeGateway(), ParallelGateway(), EmptyEndEvent()
    a, b = ServiceActivity(component_code="x"), ServiceActivity(component_code="x")
    c, d, cg2 = ServiceActivity(component_code="x"), ServiceActivity(component_code="x"), ConvergeGateway()
    start.extend(eg).connect(a, b).to(eg).converge(cg).extend(pg).connect(c, d).to(pg).converge(cg2).extend(end)
    graph = compile_tree(build_tree(start))
    assert set(graph.ahead(start.id)) == {start.id, eg.id, a.id, b.id}
    assert graph.ahead(cg.id) == [cg.id, pg.id]  # the branches of a fork are other processes


def test_walk_enters_and_leaves_subprocesses():
    inner_start, inner_end = EmptyStartEvent(), EmptyEndEvent()
    inner_start.extend(inner_end)
    sub = SubProcess(start=inner_start)
    start, after, end = EmptyStartEvent(), ServiceActivity(component_code="x"), EmptyEndEvent()
    start.extend(sub).extend(after).extend(end)
    graph = compile_tree(build_tree(start))
    assert graph.ahead(start.id) == [start.id, sub.id, inner_start.id, inner_end.id, after.id]


def test_walk_is_bounded():
    start = EmptyStartEvent()
    tail = start
    gateways = []
    for _ in range(50):
        gw = ConvergeGateway()
        gateways.append(gw)
        tail = tail.extend(gw)
    tail.extend(EmptyEndEvent())
    graph = compile_tree(build_tree(start))
    assert graph.ahead(start.id, limit=8) == [start.id, *(g.id for g in gateways[:7])]


def test_compiled_nodes_are_the_nodes_their_fields_make():
    # compile_tree sets each Node's slots directly (culm.model.compiled._node): what it builds
    # must be the frozen dataclass its __init__ makes of the same fields, every field set.
    import dataclasses

    import pytest

    from culm.model.compiled import Node
    from culm.model.validator import process_tree

    start, eg, a, b, cg, end = (EmptyStartEvent(), ExclusiveGateway(conditions={0: "1 == 1", 1: "1 == 2"}),
                                ServiceActivity(component_code="x"), ServiceActivity(component_code="y"),
                                ConvergeGateway(), EmptyEndEvent())
    start.extend(eg).connect(a, b).to(eg).converge(cg).extend(end)
    graph = compile_tree(process_tree(build_tree(start)))
    assert len(graph.nodes) == 6
    names = [f.name for f in dataclasses.fields(Node)]
    for node in graph.nodes.values():
        again = Node(*(getattr(node, name) for name in names))
        assert node == again and hash(node) == hash(again) and repr(node) == repr(again)
        with pytest.raises(dataclasses.FrozenInstanceError):
            node.id = "other"  # type: ignore[misc]
    assert graph.nodes[eg.id].conditions and graph.nodes[eg.id].converge_gateway_id == cg.id
