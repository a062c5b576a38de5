"""What a storm does to pipelines, shared by the runtime storms and the deterministic simulation.

The pipelines (parallel branches, a subprocess, polling, callback and failing nodes), the random
control calls fired at them, and the operator who then acts on what they see until every pipeline
has ended. Everything random comes from the ``random.Random`` passed in, so a seed replays.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from culm import api, states
from culm.builder import (
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ExecutableEndEvent,
    ParallelGateway,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)
from culm.core.invariants import Snapshot

# Calls and their weights; "breathe" lets the engine run a little before the next call.
OPS = {"pause": 6, "resume": 8, "appoint": 8, "unappoint": 8, "retry": 6, "retry_ok": 8, "skip": 6,
       "force_fail": 5, "callback": 10, "callback_fail": 4, "revoke": 1, "breathe": 6}
# The data operations, fired only at a storm with ``data_ops`` (the simulation's): they need its
# chain's exclusive gateway (routed by ${route}) and node loop, and the forks' multiple-callback
# branch.
DATA_OPS = {"context": 5, "skip_gateway": 4, "loop_times": 3, "multi": 10}
# Retry data that makes t_fail succeed and t_poll finish at its first poll.
RETRY_OK = {"ok": True, "x": 3, "polls": 1}


@dataclass
class Storm:
    """The pipelines of one seed and the ids the calls aim at."""

    roots: list[str] = field(default_factory=list)
    activities: list[str] = field(default_factory=list)
    subprocesses: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)  # what was fired, for a failure message
    # End every pipeline and the subprocess with an executable end event (t_record_end), whose
    # code is user code a pause or a crash may cut too, and make the chain's first node a loop.
    executable_ends: bool = False
    # Put an exclusive gateway routed by ${route} in the chain, and fire DATA_OPS too.
    data_ops: bool = False
    gateways: dict[str, list[str]] = field(default_factory=dict)  # exclusive gateway -> its outgoing flows
    loops: list[str] = field(default_factory=list)  # activities with a node loop
    # Multiple-callback activities (t_multi_callback, in the routed chain): every callback a storm
    # with data_ops sends carries the next ``n`` (next_n), so each run's ``received`` must rise.
    multis: list[str] = field(default_factory=list)
    sent: int = 0

    def next_n(self) -> int:
        self.sent += 1
        return self.sent

    def act(self, code: str, timeout_config: dict[str, Any] | None = None, **plain: Any) -> ServiceActivity:
        a = activity(code, timeout_config, **plain)
        self.activities.append(a.id)
        return a

    def pipeline(self, rng: random.Random) -> dict[str, Any]:
        """One of three shapes: parallel branches, a subprocess in a branch, or a chain."""
        shape = rng.randrange(3)
        if shape == 2:
            first = self.act("t_none")
            if self.executable_ends:  # (the simulation's trees) a node loop too
                first.loop_config = {"enable": True, "loop_times": 3}
                self.loops.append(first.id)
            if self.data_ops:
                return self._routed_chain(rng, first)
            return build_tree(chain(first, self.act("t_fail", x=1), self.act("t_poll"),
                                    self.act("t_callback", timeout(rng)), end=self._end()))
        start, pg, cg = EmptyStartEvent(), ParallelGateway(), ConvergeGateway()
        branches = [self.act("t_fail", x=1), self.act("t_callback", timeout(rng)),
                    self.act("t_poll", timeout(rng), polls=3)]
        if self.data_ops:  # a branch waiting for many callbacks
            multi = self.act("t_multi_callback")
            self.multis.append(multi.id)
            branches.append(multi)
        if shape == 1:
            sub = SubProcess(start=chain(self.act("t_callback"), self.act("t_fail", x=2), end=self._end()))
            self.subprocesses.append(sub.id)
            branches.append(sub)
        start.extend(pg).connect(*branches).converge(cg).extend(self.act("t_none")).extend(self._end())
        return build_tree(start)

    def _routed_chain(self, rng: random.Random, first: ServiceActivity) -> dict[str, Any]:
        """The chain with an exclusive gateway after its failing node: ${route} 1 or 2 picks a
        branch, 0 (or anything else) fails the gateway until an operator skips it along a flow,
        or changes ${route} and retries it."""
        start, eg, cg = EmptyStartEvent(), ExclusiveGateway(conditions={0: "${route} == 1", 1: "${route} == 2"}), \
            ConvergeGateway()
        start.extend(first).extend(self.act("t_fail", x=1)).extend(eg).connect(
            self.act("t_none"), self.act("t_poll")).converge(cg).extend(
            self.act("t_callback", timeout(rng))).extend(self._end())
        tree = build_tree(start, data=Data(inputs={"${route}": Var(type=Var.PLAIN, value=rng.choice((0, 1, 2)))}))
        self.gateways[eg.id] = list(tree["gateways"][eg.id]["outgoing"])
        return tree

    def _end(self) -> Any:
        return ExecutableEndEvent(type="t_record_end") if self.executable_ends else EmptyEndEvent()

    def report(self, found: list[Any], when: str) -> str:
        return f"{when}: " + "; ".join(map(str, found)) + "\ncalls:\n  " + "\n  ".join(self.calls)


def activity(code: str, timeout_config: dict[str, Any] | None = None, **plain: Any) -> ServiceActivity:
    """A ServiceActivity of component ``code`` with plain inputs ``plain``."""
    a = ServiceActivity(component_code=code, timeout_config=timeout_config)
    for key, value in plain.items():
        setattr(a.component.inputs, key, Var(type=Var.PLAIN, value=value))
    return a


def timeout(rng: random.Random) -> dict[str, Any] | None:
    """A node timeout for half the waiting activities (their deadline races the storm's calls)."""
    if rng.random() < 0.5:
        return None
    return {"enable": True, "action": rng.choice(("forced_fail", "forced_fail_and_skip")), "seconds": rng.choice((1, 3))}


def chain(*nodes: Any, end: Any = None) -> EmptyStartEvent:
    start = EmptyStartEvent()
    tail: Any = start
    for n in nodes:
        tail = tail.extend(n)
    tail.extend(end if end is not None else EmptyEndEvent())
    return start


def version_of(runtime: Any, node_id: str) -> str:
    res = api.get_children_states(runtime, node_id)
    return (res.data or {}).get(node_id, {}).get("version", "v-none")


def control_calls(runtime: Any, act: str, pipe: str, extra: dict[str, Any] | None = None) -> dict[str, Callable[[], Any]]:
    """Each op of OPS (but "breathe") as a call at activity ``act`` or pipeline ``pipe``;
    ``extra`` goes into every callback payload."""
    def back(payload: dict[str, Any]) -> Callable[[], Any]:
        return lambda: api.callback(runtime, act, version_of(runtime, act), {**payload, **(extra or {})})

    return {
        "pause": lambda: api.pause_pipeline(runtime, pipe),
        "resume": lambda: api.resume_pipeline(runtime, pipe),
        "appoint": lambda: api.pause_node_appoint(runtime, act),
        "unappoint": lambda: api.resume_node_appoint(runtime, act),
        "retry": lambda: api.retry_node(runtime, act),
        "retry_ok": lambda: api.retry_node(runtime, act, data=dict(RETRY_OK)),
        "skip": lambda: api.skip_node(runtime, act),
        "force_fail": lambda: api.forced_fail_activity(runtime, act, "forced by the storm"),
        "callback": back({"ok": True}),
        "callback_fail": back({"ok": False}),
        "revoke": lambda: api.revoke_pipeline(runtime, pipe),
    }


def fire(runtime: Any, storm: Storm, rng: random.Random) -> str:
    """Fire one random control call (or pick "breathe", left to the caller); returns the op."""
    act = rng.choice(storm.activities)
    pipe = rng.choice(storm.roots + storm.subprocesses)
    ops = {**OPS, **DATA_OPS} if storm.data_ops else OPS
    op = rng.choices(list(ops), weights=list(ops.values()))[0]
    if op in DATA_OPS:
        op = _fire_data_op(runtime, storm, rng, op)
    if op == "breathe":
        storm.calls.append("breathe")
        return op
    if op in DATA_OPS:
        return op
    calls = control_calls(runtime, act, pipe, {"n": storm.next_n()} if storm.data_ops else None)
    target = pipe if op in ("pause", "resume", "revoke") else act
    res = calls[op]()
    storm.calls.append(f"{op} {target} -> {res.result}")
    assert res.result or (res.message and "Traceback" not in res.message), res
    return op


def _fire_data_op(runtime: Any, storm: Storm, rng: random.Random, op: str) -> str:
    """Fire data op ``op`` of DATA_OPS; "breathe" when the storm has nothing it aims at."""
    if op == "context":
        root = rng.choice(storm.roots)
        route = rng.choice((0, 1, 2))
        res, target = api.update_context_values(runtime, root, {"${route}": route}), f"{root} route={route}"
    elif op == "skip_gateway" and storm.gateways:
        gw = rng.choice(sorted(storm.gateways))
        flow = rng.choice(storm.gateways[gw])
        res, target = api.skip_exclusive_gateway(runtime, gw, flow), f"{gw} flow={flow}"
    elif op == "multi" and storm.multis:  # several callbacks in a row, each with the next n
        node = rng.choice(storm.multis)
        for _ in range(rng.randint(1, 3)):
            n = storm.next_n()
            res = api.callback(runtime, node, version_of(runtime, node), {"ok": rng.random() > 0.05, "n": n})
            storm.calls.append(f"multi {node} n={n} -> {res.result}")
        return op
    elif op == "loop_times" and storm.loops:
        node, times = rng.choice(storm.loops), rng.randint(1, 5)
        res, target = api.update_node_loop_times(runtime, node, times), f"{node} times={times}"
    else:
        return "breathe"
    storm.calls.append(f"{op} {target} -> {res.result}")
    assert res.result or (res.message and "Traceback" not in res.message), res
    return op


def operate(runtime: Any, snap: Snapshot, rng: random.Random, payload: dict[str, Any] | None = None) -> bool:
    """Act on what an operator sees in one pipeline; returns False once it has ended.

    ``payload``: what a waiting callback node is called back with (``{"ok": True}``)."""
    sts, root = snap.states, snap.root_id
    if sts[root].name in (states.FINISHED, states.REVOKED):
        return False
    if sts[root].name == states.SUSPENDED:
        assert api.resume_pipeline(runtime, root).result
    # A node whose callbacks are still on their way gets no more: the operator waits for those
    # (a multiple-callback node takes them one at a time; time passes only while nothing is due).
    on_the_way = {t.node_id for t in snap.tasks if t.callback_id is not None}
    open_callbacks = {(s.node_id, s.version) for s in snap.schedules
                      if s.type != "poll" and not s.finished and not s.expired and s.node_id not in on_the_way}
    for node_id, st in sts.items():
        node = snap.graph.nodes.get(node_id)
        if node is None:
            continue
        if st.name == states.SUSPENDED:
            resume = api.resume_pipeline if node.type == "SubProcess" else api.resume_node_appoint
            resume(runtime, node_id)
        elif st.name == states.FAILED and node.type == "ExclusiveGateway":
            if rng.random() < 0.5:
                api.skip_exclusive_gateway(runtime, node_id, rng.choice(node.flows))
            else:  # the operator routes the pipeline and tries the gateway again
                api.update_context_values(runtime, node.pipeline_id, {"${route}": rng.choice((1, 2))})
                api.retry_node(runtime, node_id)
        elif st.name == states.FAILED:
            if rng.random() < 0.5:
                api.skip_node(runtime, node_id)
            else:
                api.retry_node(runtime, node_id, data=dict(RETRY_OK))
        elif st.name == states.RUNNING and (node_id, st.version) in open_callbacks:
            api.callback(runtime, node_id, st.version, dict(payload or {"ok": True}))
        elif st.name == states.REVOKED and node.type == "SubProcess":
            # A revoked subprocess holds its run up for good: the operator ends the run.
            assert api.revoke_pipeline(runtime, root).result
            return True
    return True
