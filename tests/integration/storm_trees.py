"""Random-tree storms: many control calls from many threads (and processes) at random trees.

A tree is made of blocks picked at random, nested up to a depth: activities (plain, failing,
polling, single- and multiple-callback, see ``storm_components.py``), parallel, exclusive and
conditional parallel gateways with their converge gateways, subprocesses and graph loops. Callers
fire :func:`fire` (:func:`storm`: from many threads for a while) from as many processes as they
like; :func:`check_then_drive` asks the invariant checker (:mod:`culm.core.invariants`) about
every pipeline and acts as an operator until every pipeline has ended, and :func:`repeated` counts
the executions the components recorded more than once for one node version.

A second process joins a storm with ``python storm_trees.py runner|client ...`` (see :func:`main`).
"""

from __future__ import annotations

import collections
import json
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import storm_components  # noqa: F401 - registers the s_* components
import storm_ops

from culm import api
from culm import builder as b
from culm.core.invariants import Snapshot, Violation, check, check_transitions
from culm.core.snapshots import read_snapshots

# Calls and their weights; "breathe" lets the engine run a little before the next call.
OPS = {"pause": 6, "resume": 8, "appoint": 6, "unappoint": 8, "retry": 5, "retry_ok": 8, "skip": 6,
       "force_fail": 5, "callback": 10, "callback_fail": 3, "multi": 10, "multi_done": 5, "revoke": 0.05,
       "skip_gateway": 3, "breathe": 8}


@dataclass
class Forest:
    """The pipelines of one storm and the ids calls aim at."""

    roots: list[str] = field(default_factory=list)
    trees: list[dict[str, Any]] = field(default_factory=list)
    activities: list[str] = field(default_factory=list)
    multis: list[str] = field(default_factory=list)
    pipes: list[str] = field(default_factory=list)  # roots and subprocesses
    gateways: dict[str, str] = field(default_factory=dict)  # exclusive and conditional parallel -> root
    subs: list[str] = field(default_factory=list)  # subprocess nodes
    loops: list[str] = field(default_factory=list)  # activities with a node loop (loop_config)
    calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, line: str) -> None:
        with self.lock:
            self.calls.append(line)

    def ids(self) -> str:
        """The ids calls aim at, as JSON (for another process: ``Forest(**json.loads(...))``)."""
        return json.dumps({k: getattr(self, k) for k in ("roots", "activities", "multis", "pipes", "gateways", "subs",
                                                        "loops")})

    def unclear(self) -> list[str]:
        """Refusals that are no clear answer: an unexpected error (the API's "<call> failed: ...")."""
        return [c for c in self.calls if " failed: " in c]


class TreeMaker:
    """Builds one random tree into a :class:`Forest`."""

    ACTS = (("s_plain", 4), ("s_flaky", 3), ("s_poll", 3), ("s_callback", 3), ("s_multi", 2))
    RICH_ACTS = (*ACTS, ("s_raise", 2))

    def __init__(self, rng: random.Random, forest: Forest, size: int = 8, depth: int = 2,
                 ms: tuple[int, ...] = (0, 0, 5, 20), rich: bool = False) -> None:
        """``ms``: how long a call sleeps, one of these picked per activity. ``rich``: also raising
        activities, error-ignorable ones, node loops, node timeouts, executable end events (s_end)
        and a context value ``${mark}`` that every activity's input ``mark`` renders."""
        self.rng, self.forest, self.size, self.depth, self.ms = rng, forest, size, depth, ms
        self.rich = rich

    def end(self) -> b.Element:
        return b.ExecutableEndEvent(type="s_end") if self.rich else b.EmptyEndEvent()

    def tree(self) -> dict[str, Any]:
        start = b.EmptyStartEvent()
        loops: dict[str, Any] = {}
        head, tail = self.block(self.size, self.depth, loops)
        start.extend(head)
        tail.extend(self.end())
        if self.rich:
            loops["${mark}"] = b.Var(type=b.Var.PLAIN, value=0)
        tree = b.build_tree(start, data=b.Data(inputs=loops))
        self.forest.gateways.update({g: tree["id"] for g, root in self.forest.gateways.items() if not root})
        self.forest.roots.append(tree["id"])
        self.forest.pipes.append(tree["id"])
        self.forest.trees.append(tree)
        return tree

    def act(self) -> b.ServiceActivity:
        codes, weights = zip(*(self.RICH_ACTS if self.rich else self.ACTS), strict=True)
        code = self.rng.choices(codes, weights=weights)[0]
        a = b.ServiceActivity(component_code=code)
        if self.rich:
            self.enrich(a, code)
        a.component.inputs.ms = b.Var(type=b.Var.PLAIN, value=self.rng.choice(self.ms))
        if code == "s_poll":
            a.component.inputs.polls = b.Var(type=b.Var.PLAIN, value=self.rng.randint(1, 4))
        self.forest.activities.append(a.id)
        if code == "s_multi":
            self.forest.multis.append(a.id)
        return a

    def enrich(self, a: b.ServiceActivity, code: str) -> None:
        """What a rich tree adds to an activity: an ignorable failure, a node loop, a node timeout."""
        a.component.inputs.mark = b.Var(type=b.Var.SPLICE, value="${mark}")
        if code in ("s_flaky", "s_raise") and self.rng.random() < 0.3:
            a.error_ignorable = True
        if code in ("s_plain", "s_flaky") and self.rng.random() < 0.25:
            a.loop_config = {"enable": True, "loop_times": self.rng.randint(2, 3)}
            self.forest.loops.append(a.id)
        if code in ("s_poll", "s_callback", "s_multi") and self.rng.random() < 0.3:
            a.timeout_config = {"enable": True, "action": self.rng.choice(("forced_fail", "forced_fail_and_skip")),
                                "seconds": self.rng.randint(1, 4)}
        if code == "s_poll" and self.rng.random() < 0.3:
            a.component.inputs.polls = b.Var(type=b.Var.PLAIN, value=self.rng.randint(20, 60))

    def block(self, size: int, depth: int, loops: dict[str, Any]) -> tuple[b.Element, b.Element]:
        """A chain of about ``size`` nodes; returns its first and last element."""
        head: b.Element | None = None
        tail: b.Element | None = None
        while size > 0:
            first, last, used = self.piece(size, depth, loops)
            if tail is None:
                head = first
            else:
                tail.extend(first)
            tail, size = last, size - used
        assert head is not None and tail is not None
        return head, tail

    def piece(self, size: int, depth: int, loops: dict[str, Any]) -> tuple[b.Element, b.Element, int]:
        kind = self.rng.choice(("act", "act", "parallel", "exclusive", "conditional", "sub", "loop")
                               if depth > 0 and size >= 3 else ("act",))
        if kind == "act":
            a = self.act()
            return a, a, 1
        if kind == "loop":
            body, after = self.act(), self.act()
            key = f"${{n_{body.id}}}"
            loops[key] = b.NodeOutput(source_act=body.id, source_key="_loop")
            eg = b.ExclusiveGateway(conditions={0: f"{key} < 2", 1: f"{key} >= 2"})
            body.extend(eg)
            eg.connect(body, after)
            return body, after, 3
        if kind == "sub":
            inner: dict[str, Any] = {}
            start = b.EmptyStartEvent()
            h, t = self.block(max(1, size // 2), depth - 1, inner)
            start.extend(h)
            t.extend(self.end())
            params = {}
            if self.rich and depth == self.depth and self.rng.random() < 0.5:  # its parent is the root
                params["${gate}"] = b.Var(type=b.Var.LAZY, custom_type="s_mark_gate", value="${mark}")
            sub = b.SubProcess(start=start, data=b.Data(inputs=inner), params=params)
            self.forest.pipes.append(sub.id)
            self.forest.subs.append(sub.id)
            return sub, sub, max(1, size // 2) + 1
        return self.fork(kind, size, depth, loops)

    def fork(self, kind: str, size: int, depth: int, loops: dict[str, Any]) -> tuple[b.Element, b.Element, int]:
        n = self.rng.randint(2, 3)
        share = max(1, (size - 2) // n)
        gw: b.Element
        # One conditional gateway in four fails (its conditions name no variable): an operator skips it.
        yes, no = ("${no_such_key} == 1", "${no_such_key} == 0") if self.rng.random() < 0.25 else ("1 == 1", "1 == 0")
        if kind == "parallel":
            gw = b.ParallelGateway()
        elif kind == "exclusive":
            chosen = self.rng.randrange(n)
            gw = b.ExclusiveGateway(conditions={i: yes if i == chosen else no for i in range(n)})
        else:
            gw = b.ConditionalParallelGateway(conditions={i: yes if i == 0 or self.rng.random() < 0.5 else no
                                                        for i in range(n)})
        if kind != "parallel":
            self.forest.gateways[gw.id] = ""  # its root is known once the tree is built
        cg = b.ConvergeGateway()
        for _ in range(n):
            h, t = self.block(share, depth - 1, loops)
            gw.extend(h)
            t.extend(cg)
        return gw, cg, share * n + 2


def make_forest(rng: random.Random, pipelines: int, size: int = 8, depth: int = 2,
                ms: tuple[int, ...] = (0, 0, 5, 20), rich: bool = False) -> Forest:
    forest = Forest()
    for _ in range(pipelines):
        TreeMaker(rng, forest, size, depth, ms, rich).tree()
    return forest


def start_all(runtime: Any, forest: Forest) -> None:
    for tree in forest.trees:
        res = api.run_pipeline(runtime, tree, cycle_tolerate=True)
        assert res.result, res.message


def fire(runtime: Any, forest: Forest, rng: random.Random) -> str:
    """Fire one random control call (or "breathe", left to the caller); returns the op."""
    op = rng.choices(list(OPS), weights=list(OPS.values()))[0]
    if op == "breathe" or (op == "skip_gateway" and not forest.gateways):
        return "breathe"
    act = rng.choice(forest.multis if op in ("multi", "multi_done") and forest.multis else forest.activities)
    pipe = rng.choice(forest.pipes)
    n = rng.randrange(1000)
    calls = storm_ops.control_calls(runtime, act, pipe, {"n": n})
    version = storm_ops.version_of
    calls["multi"] = lambda: api.callback(runtime, act, version(runtime, act), {"ok": True, "n": n, "ms": 20})
    calls["multi_done"] = lambda: api.callback(runtime, act, version(runtime, act), {"done": True, "n": n})
    if op == "skip_gateway":
        act = rng.choice(list(forest.gateways))
        calls[op] = lambda: skip_gateway(runtime, act, rng, forest.gateways[act])
    res = calls[op]()
    target = pipe if op in ("pause", "resume", "revoke") else act
    forest.note(f"{op} {target} -> {res.result} {'' if res.result else res.message[:160]}")
    assert res.result or (res.message and "Traceback" not in res.message), res
    return op


def skip_gateway(runtime: Any, gateway_id: str, rng: random.Random, root_or_graph: Any) -> Any:
    """Skip a (failed) exclusive or conditional parallel gateway along one or more of its flows."""
    graph = root_or_graph
    if isinstance(graph, str):
        with runtime.engine.store.reading() as unit:
            graph = runtime.engine.graph(root_or_graph, unit)
    node = graph.nodes[gateway_id]
    if node.type == "ExclusiveGateway":
        return api.skip_exclusive_gateway(runtime, gateway_id, rng.choice(node.flows))
    flows = rng.sample(list(node.flows), rng.randint(1, len(node.flows)))
    return api.skip_conditional_parallel_gateway(runtime, gateway_id, flows, node.converge_gateway_id)


def operate(runtime: Any, snap: Snapshot, rng: random.Random) -> bool:
    """Act on what an operator sees in one pipeline (a failed gateway is skipped, a multiple
    callback is told it is done); returns False once it has ended."""
    for node_id, st in snap.states.items():
        node = snap.graph.nodes.get(node_id)
        if st.name == "FAILED" and node is not None and node.type in ("ExclusiveGateway", "ConditionalParallelGateway"):
            skip_gateway(runtime, node_id, rng, snap.graph)
        if st.name == "FAILED" and node is not None and node.type == "SubProcess":  # failed on entry (s_mark_gate)
            api.update_context_values(runtime, snap.root_id, {"${mark}": rng.randint(1, 9)})
            api.retry_subprocess(runtime, node_id)
    return storm_ops.operate(runtime, snap, rng, {"ok": True, "done": True, "n": -1})


def violations(runtime: Any, forest: Forest) -> list[Violation]:
    """The checker's findings on every pipeline and on every transition the change feed holds."""
    found: list[Violation] = []
    for root, snap in read_snapshots(runtime.engine, forest.roots).items():
        found += check(snap)
        found += check_transitions(runtime.engine.store.feed.transitions(root)[0])
    return found


def executions(log: Path, kind: str = "execute") -> collections.Counter[tuple[str, str]]:
    """How many times each (node, version) ran ``kind``, as the s_* components recorded it."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    if log.exists():
        for line in log.read_text().splitlines():
            k, node_id, version, _pid = line.split()
            if k == kind:
                counts[(node_id, version)] += 1
    return counts


def repeated(log: Path) -> dict[tuple[str, str], int]:
    """(node, version) -> extra executions, for every version whose ``execute`` ran more than once."""
    return {key: n - 1 for key, n in executions(log).items() if n > 1}


def ended(runtime: Any, forest: Forest) -> dict[str, str]:
    return {r: s.states[r].name for r, s in read_snapshots(runtime.engine, forest.roots).items()}


def report(forest: Forest, found: list[Any], when: str, last: int = 60) -> str:
    return f"{when}: " + "; ".join(map(str, found))[:6000] + "\nlast calls:\n  " + "\n  ".join(forest.calls[-last:])


def storm(runtime: Any, forest: Forest, seed: int, threads: int, seconds: float) -> int:
    """Fire calls from ``threads`` threads for ``seconds``; returns how many were fired."""
    fired = [0] * threads

    def caller(i: int) -> None:
        rng, end = random.Random(seed * 1000 + i), time.monotonic() + seconds
        while time.monotonic() < end:
            fired[i] += 1
            if fire(runtime, forest, rng) == "breathe":
                time.sleep(0.05)

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(seconds + 120)
    return sum(fired)


def settle(runtime: Any, forest: Forest, timeout: float) -> None:
    """Wait (bounded) until no pipeline has a task left; fails naming what is left."""
    left: list[Any] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        left = [(t.kind, t.node_id) for s in read_snapshots(runtime.engine, forest.roots).values() for t in s.tasks]
        if not left:
            return
        time.sleep(0.05)
    raise AssertionError(report(forest, left, f"tasks left after {timeout} s"))


def check_then_drive(runtime: Any, forest: Forest, seed: int, settle_for: float = 30.0, rounds: int = 30) -> None:
    """Settle, check every pipeline, then act as an operator (checking after each round) until
    every pipeline is FINISHED or REVOKED; fails with what broke and the last calls fired."""
    settle(runtime, forest, settle_for)
    found = violations(runtime, forest)
    assert not found, report(forest, found, "after the storm")
    rng = random.Random(seed)
    for round_ in range(rounds):
        snaps = read_snapshots(runtime.engine, forest.roots)
        if not [r for r, snap in snaps.items() if operate(runtime, snap, rng)]:
            return
        settle(runtime, forest, settle_for)
        found = violations(runtime, forest)
        assert not found, report(forest, found, f"operator round {round_}")
    raise AssertionError(report(forest, [], f"not ended after {rounds} rounds: {ended(runtime, forest)}"))


def main(argv: list[str]) -> None:
    """``runner|client URL IDS_FILE SEED THREADS SECONDS [BROKER PREFIX]``: storm the pipelines
    of IDS_FILE (:meth:`Forest.ids`) from another process. A ``runner`` runs the SQLite file's work
    (it holds the runner lock) and stays up after its storm until it is killed; a ``client``
    prints ``{"calls": n, "unclear": [...]}`` and exits."""
    import culm

    role, url, ids, seed, threads, seconds = argv[:6]
    options = {"broker": argv[6], "prefix": argv[7]} if len(argv) > 6 else {}
    runtime = culm.Runtime(url, **options)
    if role == "runner":
        assert runtime.dispatcher is not None, "another process runs this file's work"
    print("ready", flush=True)
    forest = Forest(**json.loads(Path(ids).read_text()))
    fired = storm(runtime, forest, int(seed), int(threads), float(seconds))
    print(json.dumps({"calls": fired, "unclear": forest.unclear()}), flush=True)
    if role == "runner":
        time.sleep(600)
    runtime.close()


if __name__ == "__main__":
    main(sys.argv[1:])
