"""The pipeline shapes the benchmarks run (bamboo's own benchmark shapes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from culm.builder import (
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ParallelGateway,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)
from culm.components import Component, Service


class NoopService(Service):
    """Does nothing and succeeds: the benchmarks measure the engine, not the component."""

    def execute(self, data: Any, parent_data: Any) -> bool:
        return True


class NoopComponent(Component):
    code = "bench_noop"
    name = "bench no-op"
    bound_service = NoopService


class CallbackService(Service):
    """Waits for one ``api.callback`` (sent by no timed benchmark): a branch that stands still.
    A callback with ``{"ok": False}`` fails the node (``bench.poll_trips``: a failed node's poll)."""

    __need_schedule__ = True
    interval = None

    def execute(self, data: Any, parent_data: Any) -> bool:
        return True

    def schedule(self, data: Any, parent_data: Any, callback_data: Any = None) -> bool:
        self.finish_schedule()
        return bool((callback_data or {}).get("ok", True))


class CallbackComponent(Component):
    code = "bench_callback"
    name = "bench waits for a callback"
    bound_service = CallbackService


def _act() -> ServiceActivity:
    act = ServiceActivity(component_code="bench_noop")
    act.component.inputs.text = Var(type=Var.SPLICE, value="${a}-${b}")
    act.component.inputs.number = Var(type=Var.SPLICE, value="${int(n) + 1}")
    return act


def normal_pipeline() -> dict[str, Any]:
    """17 executed nodes: 2 acts, a subprocess of 2 acts, 3 parallel acts, 1 of 2 exclusive acts."""
    sub_start, sub_end = EmptyStartEvent(), EmptyEndEvent()
    sub_start.extend(_act()).extend(_act()).extend(sub_end)
    sub = SubProcess(start=sub_start, data=Data(inputs={"${a}": Var(type=Var.PLAIN, value="x"),
                                                        "${b}": Var(type=Var.PLAIN, value="y"),
                                                        "${n}": Var(type=Var.PLAIN, value="1")}))
    start, end = EmptyStartEvent(), EmptyEndEvent()
    pg, pcg = ParallelGateway(), ConvergeGateway()
    eg = ExclusiveGateway(conditions={0: "${n} == 1", 1: "${n} != 1"})
    ecg = ConvergeGateway()
    start.extend(_act()).extend(_act()).extend(sub).extend(pg).connect(_act(), _act(), _act()).converge(pcg)
    pcg.extend(eg).connect(_act(), _act()).converge(ecg).extend(end)
    inputs = {"${a}": Var(type=Var.PLAIN, value="x"), "${b}": Var(type=Var.PLAIN, value="y"),
              "${n}": Var(type=Var.PLAIN, value="1")}
    return build_tree(start, data=Data(inputs=inputs))


def wide_pipeline(branches: int = 100, length: int = 10) -> dict[str, Any]:
    """start -> parallel gateway -> ``branches`` x ``length`` acts -> converge -> end."""
    return _wide(branches, length, lambda _i: _act())


def waiting_pipeline(branches: int = 100, length: int = 10) -> dict[str, Any]:
    """``wide_pipeline`` whose branches each stop halfway, RUNNING, waiting for a callback: a
    running pipeline that stands still (what a poll of a running pipeline reads, repeatably)."""
    return _wide(branches, length,
                 lambda i: ServiceActivity(component_code="bench_callback") if i == length // 2 else _act())


def _wide(branches: int, length: int, act_after_head: Callable[[int], ServiceActivity]) -> dict[str, Any]:
    """The wide shape; ``act_after_head(i)`` makes a branch's activity i+1 (after its first)."""
    start, end = EmptyStartEvent(), EmptyEndEvent()
    pg, cg = ParallelGateway(), ConvergeGateway()
    heads = []
    for _ in range(branches):
        head = _act()
        tail = head
        for i in range(length - 1):
            tail = tail.extend(act_after_head(i))
        heads.append(head)
    start.extend(pg).connect(*heads).converge(cg).extend(end)
    return build_tree(start, data=Data(inputs={"${a}": Var(type=Var.PLAIN, value="x"),
                                              "${b}": Var(type=Var.PLAIN, value="y"),
                                              "${n}": Var(type=Var.PLAIN, value="1")}))


def chain_pipeline(length: int = 1000) -> dict[str, Any]:
    """start -> ``length`` acts in a row -> end."""
    start, end = EmptyStartEvent(), EmptyEndEvent()
    tail: Any = start
    for _ in range(length):
        tail = tail.extend(_act())
    tail.extend(end)
    return build_tree(start, data=Data(inputs={"${a}": Var(type=Var.PLAIN, value="x"),
                                              "${b}": Var(type=Var.PLAIN, value="y"),
                                              "${n}": Var(type=Var.PLAIN, value="1")}))


def executed_nodes(tree: dict[str, Any]) -> int:
    """Nodes a run of ``tree`` executes (exclusive gateways take one branch of one act here)."""
    count = 2 + len(tree["activities"]) + len(tree["gateways"])
    for act in tree["activities"].values():
        if act["type"] == "SubProcess":
            count += executed_nodes(act["pipeline"])
    skipped = sum(1 for g in tree["gateways"].values() if g["type"] == "ExclusiveGateway")
    return count - skipped


def small_pipeline() -> dict[str, Any]:
    """start -> one act -> end (3 executed nodes): the unit of the 10,000-pipeline scale run."""
    start, end = EmptyStartEvent(), EmptyEndEvent()
    start.extend(_act()).extend(end)
    return build_tree(start, data=Data(inputs={"${a}": Var(type=Var.PLAIN, value="x"),
                                              "${b}": Var(type=Var.PLAIN, value="y"),
                                              "${n}": Var(type=Var.PLAIN, value="1")}))
