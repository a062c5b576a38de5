"""Random-tree storms: many control calls from many threads (and processes) at random trees.

A tree is made of blocks picked at random, nested up to a depth: activities (plain, failing,
polling, single- and multiple-callback, see ``storm_components.py``), parallel, exclusive and
conditional parallel gateways with their converge gateways, subprocesses and graph loops. Callers
fire :func:`fire` from as many threads or processes as they like, then :func:`check_all` asks the
invariant checker (:mod:`culm.core.invariants`) about every pipeline and counts the executions
the components recorded, and :func:`drive` acts as an operator until every pipeline has ended.

Run by hand for storms bigger than the suite's::

    python tests/integration/storm_trees.py --seed 1 --pipelines 30 --threads 12 --calls 600
"""

from __future__ import annotations

import collections
import random
import threading
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
       "breathe": 8}


@dataclass
class Forest:
    """The pipelines of one storm and the ids calls aim at."""

    roots: list[str] = field(default_factory=list)
    trees: list[dict[str, Any]] = field(default_factory=list)
    activities: list[str] = field(default_factory=list)
    multis: list[str] = field(default_factory=list)
    pipes: list[str] = field(default_factory=list)  # roots and subprocesses
    calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, line: str) -> None:
        with self.lock:
            self.calls.append(line)


class TreeMaker:
    """Builds one random tree into a :class:`Forest`."""

    ACTS = (("s_plain", 4), ("s_flaky", 3), ("s_poll", 3), ("s_callback", 3), ("s_multi", 2))
    MS = (0, 0, 5, 20)  # how long a call sleeps, picked per activity

    def __init__(self, rng: random.Random, forest: Forest, size: int = 8, depth: int = 2) -> None:
        self.rng, self.forest, self.size, self.depth = rng, forest, size, depth

    def tree(self) -> dict[str, Any]:
        start = b.EmptyStartEvent()
        loops: dict[str, Any] = {}
        head, tail = self.block(self.size, self.depth, loops)
        start.extend(head)
        tail.extend(b.EmptyEndEvent())
        tree = b.build_tree(start, data=b.Data(inputs=loops))
        self.forest.roots.append(tree["id"])
        self.forest.pipes.append(tree["id"])
        self.forest.trees.append(tree)
        return tree

    def act(self) -> b.ServiceActivity:
        codes, weights = zip(*self.ACTS, strict=True)
        code = self.rng.choices(codes, weights=weights)[0]
        a = b.ServiceActivity(component_code=code)
        a.component.inputs.ms = b.Var(type=b.Var.PLAIN, value=self.rng.choice(self.MS))
        if code == "s_poll":
            a.component.inputs.polls = b.Var(type=b.Var.PLAIN, value=self.rng.randint(1, 4))
        self.forest.activities.append(a.id)
        if code == "s_multi":
            self.forest.multis.append(a.id)
        return a

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
            t.extend(b.EmptyEndEvent())
            sub = b.SubProcess(start=start, data=b.Data(inputs=inner))
            self.forest.pipes.append(sub.id)
            return sub, sub, max(1, size // 2) + 1
        return self.fork(kind, size, depth, loops)

    def fork(self, kind: str, size: int, depth: int, loops: dict[str, Any]) -> tuple[b.Element, b.Element, int]:
        n = self.rng.randint(2, 3)
        share = max(1, (size - 2) // n)
        gw: b.Element
        if kind == "parallel":
            gw = b.ParallelGateway()
        elif kind == "exclusive":
            chosen = self.rng.randrange(n)
            gw = b.ExclusiveGateway(conditions={i: "1 == 1" if i == chosen else "1 == 0" for i in range(n)})
        else:
            gw = b.ConditionalParallelGateway(conditions={i: "1 == 1" if i == 0 or self.rng.random() < 0.5 else "1 == 0"
                                                        for i in range(n)})
        cg = b.ConvergeGateway()
        for _ in range(n):
            h, t = self.block(share, depth - 1, loops)
            gw.extend(h)
            t.extend(cg)
        return gw, cg, share * n + 2


def make_forest(rng: random.Random, pipelines: int, size: int = 8, depth: int = 2) -> Forest:
    forest = Forest()
    for _ in range(pipelines):
        TreeMaker(rng, forest, size, depth).tree()
    return forest


def start_all(runtime: Any, forest: Forest) -> None:
    for tree in forest.trees:
        res = api.run_pipeline(runtime, tree, cycle_tolerate=True)
        assert res.result, res.message


def fire(runtime: Any, forest: Forest, rng: random.Random) -> str:
    """Fire one random control call (or "breathe", left to the caller); returns the op."""
    op = rng.choices(list(OPS), weights=list(OPS.values()))[0]
    if op == "breathe":
        return op
    act = rng.choice(forest.multis if op in ("multi", "multi_done") and forest.multis else forest.activities)
    pipe = rng.choice(forest.pipes)
    n = rng.randrange(1000)
    calls = storm_ops.control_calls(runtime, act, pipe, {"n": n})
    version = storm_ops.version_of
    calls["multi"] = lambda: api.callback(runtime, act, version(runtime, act), {"ok": True, "n": n, "ms": 20})
    calls["multi_done"] = lambda: api.callback(runtime, act, version(runtime, act), {"done": True, "n": n})
    res = calls[op]()
    target = pipe if op in ("pause", "resume", "revoke") else act
    forest.note(f"{op} {target} -> {res.result} {'' if res.result else res.message[:120]}")
    assert res.result or (res.message and "Traceback" not in res.message), res
    return op


def operate(runtime: Any, snap: Snapshot, rng: random.Random) -> bool:
    """Act on what an operator sees in one pipeline (a multiple callback is told it is done);
    returns False once it has ended."""
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
