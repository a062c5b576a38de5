"""Deterministic simulation of the engine: one seed, one exact interleaving, replayable.

An :class:`culm.dispatch.inline.InlineDispatcher` collects committed tasks and a seeded scheduler
decides, step by step, what happens next: an engine step (one transaction over a batch of one to
three tasks, as a runner commits them), a piece of user code completing, an operator's control
call or callback (``storm_ops``), a timer firing (the virtual clock jumps to the next due task), a
lease running out (another runner takes the task over), a sweep, or a crash.

The store is the memory store (:mod:`culm.storage.memory`; ``--sqlite``: SQLite in memory, about
half as fast). A crash (injected just before a batch commits, or between steps) drops the open
transaction and everything held only in process memory: the store is reopened over what was
committed (:meth:`MemoryStore.reopen`), the engine is a new one (no cached graphs or state trees),
and queued tasks, user code handed out and results not yet applied are gone (the feed must show
none of the crashed batch's state changes). Recovery is what a restarted runner does (void the
leases, sweep the task table).

After every step the invariants are checked (:mod:`culm.core.invariants`): no stuck or stranded
pipeline, every state transition in the table, converge gateways never early; no node's
``execute`` runs twice for one version unless a crash or a lease expiry happened in between, and
none whose result a batch committed is handed out again, crash or not (an executable end event's
code included: the pipelines end with one, t_record_end); a schedule call (a poll, a callback)
counts once: a batch counts only calls it applies, each never counted before. A poller's kept
state trees (the engine's, read after every step) give what a full read gives, wait reasons
included: every write that moves a wait reason without a state change is in the change feed.
After the storm the simulation stops injecting and drives every pipeline to its end as an operator
would. Ids, versions and the clock come from the seed, so a failure replays exactly::

    python tests/integration/simulation.py 1-2000        # seeds; prints failures and timing
    python tests/integration/simulation.py 17 --trace     # one seed, every step
    python tests/integration/simulation.py 1-200 --sqlite # the same on SQLite in memory
    python tests/integration/simulation.py 1-2000 --steps=60 --pipelines=2   # the CI's storm
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: the test components live next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import components  # noqa: F401 - registers the t_* components
from storm_ops import Storm, fire, operate

import culm
from culm.core import loop, queries, records
from culm.core.engine import Engine, Settings
from culm.core.invariants import Violation, check, check_transitions
from culm.core.loop import UserCall
from culm.core.outcomes import Invoke
from culm.core.records import EXECUTE, SCHEDULE, TaskRecord
from culm.core.snapshots import read_snapshot, read_snapshots
from culm.core.state_tree import StateTrees
from culm.dispatch.inline import InlineDispatcher
from culm.model import builder
from culm.storage import migrate
from culm.storage.memory import MemoryStore
from culm.storage.sql import SqlStore

# Simulated backends: the memory store, or SQLite in memory (slower; the original).
BACKENDS = {"memory": "memory://", "sqlite": "sqlite:///:memory:"}
LEASE_SECONDS = 30.0
START_CLOCK = 1_700_000_000.0


def _noting(invoke: Invoke, applied: list[tuple[str, str | None]]) -> Invoke:
    """``invoke``, noting in ``applied`` its (node, version) once its result has been applied."""
    def resume(run: Any, result: Any) -> Any:
        outcome = invoke.resume(run, result)
        applied.append((invoke.node_id, invoke.version))
        return outcome

    return replace(invoke, resume=resume)


class Crash(Exception):
    """An injected crash: the open transaction is rolled back, process memory is lost."""


class SimulationFailure(AssertionError):
    """A broken invariant, with the seed and the steps that led to it."""


@dataclass(eq=False)  # items are compared by identity: two may hold the same task (a takeover)
class Item(loop.Item):
    """A task this (simulated) runner holds in memory (as a runner's batch step takes it), and the
    user code it handed out for it."""

    number: int = 0  # for traces: which of several items of one task
    epoch: int = 0  # the simulation's epoch when the user code was handed out
    owner: str = ""  # the runner holding this item (the lease owner its engine steps use)
    call: UserCall | None = None
    poll: tuple[str, int] | None = None  # a schedule call handed out: (schedule, its times then)


class _SeededBits:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def hex32(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"


class _Clock:
    def __init__(self) -> None:
        self.at = START_CLOCK

    def time(self) -> float:
        return self.at


class _SeededUuid:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)


_TEMPLATE: list[sqlite3.Connection] = []


def _copy_template(store: SqlStore) -> None:
    """Give a new in-memory store the schema by copying a migrated database (migrating each one
    would cost more than most seeds' whole run)."""
    if not _TEMPLATE:
        migrated = SqlStore("sqlite:///:memory:", create=False)
        migrate.ensure_schema(migrated)
        raw = migrated.engine.raw_connection()
        _TEMPLATE.append(sqlite3.connect(":memory:"))
        raw.driver_connection.backup(_TEMPLATE[0])
        raw.close()
        migrated.dispose()
    raw = store.engine.raw_connection()
    _TEMPLATE[0].backup(raw.driver_connection)
    raw.close()


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[_Clock]:
    """Ids, versions and the engine's clock from the seed, a copied schema (restored afterwards)."""
    clock = _Clock()
    saved = records._random, records.time, builder.uuid, SqlStore.ensure_schema
    records._random = _SeededBits(random.Random(f"ids-{seed}"))  # type: ignore[assignment]
    records.time = clock  # type: ignore[assignment]
    builder.uuid = _SeededUuid(random.Random(f"tree-{seed}"))  # type: ignore[assignment]
    SqlStore.ensure_schema = _copy_template  # type: ignore[method-assign]
    try:
        yield clock
    finally:
        records._random, records.time, builder.uuid, SqlStore.ensure_schema = saved  # type: ignore[method-assign]


class Simulation:
    """One seed's run. ``run()`` returns the number of steps; a broken invariant raises."""

    WEIGHTS = {"engine": 40, "user": 25, "control": 12, "timer": 6, "lease": 2, "sweep": 2, "crash": 3}

    def __init__(self, seed: int, *, storm_steps: int = 120, pipelines: int = 3, crashes: bool = True,
                 trace: bool = False, backend: str = "memory", data_ops: bool = True) -> None:
        """``data_ops``: the storm also updates context values, skips exclusive gateways, changes
        loop counts and sends multiple callbacks (storm_ops.DATA_OPS); False: the storm of before."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.seed = seed
        self.backend = backend
        self.storm_steps = storm_steps
        self.pipelines = pipelines
        self.crashes = crashes
        self.trace = trace
        self.rng = random.Random(seed)
        self.ready: list[Item] = []
        self.running: list[Item] = []
        # Bumped by every crash or lease expiry: user code handed out again after one may run again.
        self.epoch = 0
        # Bumped by every crash or lease expiry: the items made after it belong to another runner.
        self.runner = 0
        self.executed: dict[tuple[str, str | None], int] = {}
        # (node, version) of the executes whose result a batch applied and committed: they never
        # run again, crash or lease expiry in between or not.
        self.applied: set[tuple[str, str | None]] = set()
        # (schedule, times) of the schedule calls (polls, callbacks) whose result was committed.
        self.polled: set[tuple[str, int]] = set()
        self.steps: list[str] = []
        self.feed_seq = 0  # the change feed is read (and its transitions checked) up to here
        self.last_states: dict[str, str] = {}
        self.items = 0
        self.storm = Storm(executable_ends=True, data_ops=data_ops)

    # -- driving ---------------------------------------------------------------------------
    def run(self) -> int:
        with _deterministic(self.seed) as clock:
            self.clock = clock
            self.settings = Settings(lease_seconds=LEASE_SECONDS, schedule_lock_seconds=LEASE_SECONDS)
            self.runtime = culm.Runtime(BACKENDS[self.backend], workers=0, settings=self.settings)
            self.engine = self.runtime.engine
            self.inline = InlineDispatcher()
            self.engine.dispatcher = self.inline
            try:
                trees = [self.storm.pipeline(self.rng) for _ in range(self.pipelines)]
                for tree in trees:
                    res = culm.api.run_pipeline(self.runtime, tree)
                    assert res.result, res.message
                    self.storm.roots.append(tree["id"])
                self._absorb()
                self._check("start")
                for _ in range(self.storm_steps):
                    self._step(self._choose(storm=True))
                self._drain()
                return len(self.steps)
            finally:
                self.runtime.close()

    def _choose(self, *, storm: bool) -> str:
        enabled = {
            "engine": any(self._due(i) for i in self.ready),
            "user": bool(self.running),
            "control": storm,
            "timer": any(not self._due(i) for i in self.ready),
            "lease": storm,
            "sweep": True,
            "crash": storm and self.crashes,
        }
        ops = [op for op, on in enabled.items() if on]
        return self.rng.choices(ops, weights=[self.WEIGHTS[op] for op in ops])[0]

    def _step(self, op: str) -> None:
        getattr(self, f"_do_{op}")()
        if op not in ("user", "timer"):  # those change nothing stored
            self._check(op)
        elif self.trace:
            print(self.steps[-1])

    def _drain(self, limit: int = 3000) -> None:
        """No more storm: run everything, and act as an operator whenever nothing else moves."""
        for _ in range(limit):
            if any(self._due(i) for i in self.ready):
                self._step("engine")
            elif self.running:
                self._step("user")
            else:
                # Nothing due: the operator acts (a paused pipeline may be what a timer waits for).
                # A callback the operator sends ends a multiple-callback node too; its ``n`` comes last.
                payload = {"ok": True, "done": True, "n": self.storm.next_n()}
                moving = [r for r in self.storm.roots
                          if operate(self.runtime, read_snapshot(self.engine, r), self.rng, payload)]
                self._absorb()
                self.steps.append(f"operator round ({len(moving)} moving)")
                self._check("operate")
                if any(self._due(i) for i in self.ready):
                    continue
                if self.ready:
                    self._step("timer")
                elif self._stored_tasks():
                    self._step("lease")  # a task only a sweep after its lease can bring back
                elif not moving:
                    return
        ended = {r: read_snapshot(self.engine, r).states[r].name for r in self.storm.roots}
        self._fail([], f"not ended after {limit} drain steps: {ended}")

    # -- actions ---------------------------------------------------------------------------
    def _due(self, item: Item) -> bool:
        return item.waiting or item.task.due <= self.clock.at

    def _do_engine(self) -> None:
        """One transaction over a batch of 1-3 due items (as a runner's batch commit)."""
        due = [i for i in self.ready if self._due(i)]
        batch = self.rng.sample(due, min(len(due), self.rng.choice((1, 1, 2, 3))))
        crash = self.crashes and self.rng.random() < 0.03
        for item in batch:
            self.ready.remove(item)
            self.steps.append(f"engine {item.task.kind} {item.task.node_id} #{item.number} task {item.task.id[:6]}"
                              f" rv={(item.task.running_version or '-')[:6]} result={item.waiting}")
        if crash:
            self.steps.append("CRASH before the batch commits")
            committed = self.engine.store.feed.last_seq()
        applied: list[tuple[str, str | None]] = []
        for item in batch:
            if item.waiting and item.invoke is not None and item.task.kind == EXECUTE:
                item.invoke = _noting(item.invoke, applied)
        # Schedule calls back with their result: schedule -> (its count before the batch, the calls).
        returning: dict[str, tuple[int | None, set[int]]] = {}
        for item in batch:
            if item.waiting and item.task.kind == SCHEDULE and item.poll:
                returning.setdefault(item.poll[0], (self._times(item.poll[0]), set()))[1].add(item.poll[1])
        try:
            with self.engine.step() as step:
                handed_out = [item for item in batch if self._advance(step, item) is not None]
                if crash:
                    self._restart()  # the process dies holding the open transaction
                    raise Crash
            self.applied.update(applied)
            for schedule_id, (before, calls) in returning.items():
                after = self._times(schedule_id)
                counted = range(before, after) if before is not None and after is not None else range(0)
                # Each call counted is one back in this batch, and was never counted before: a stale
                # call (its runner lost the lease; another's call of the same poll counted) is not.
                if not set(counted) <= calls or any((schedule_id, t) in self.polled for t in counted):
                    self._fail([], f"schedule {schedule_id}: calls {[t + 1 for t in counted]} counted, of "
                               f"calls {sorted(t + 1 for t in calls)} back in this batch: a stale one counted")
                self.polled.update((schedule_id, t) for t in counted)
        except Crash:
            self._recover()
            if self.engine.store.feed.last_seq() != committed:
                self._fail([], "the crashed batch left state changes behind")
            return
        for item in handed_out:
            invoke = item.invoke
            if item.task.kind == EXECUTE and invoke is not None and (invoke.node_id, invoke.version) in self.applied:
                self._fail([], f"node {invoke.node_id} version {invoke.version}: an execute handed out again although "
                           "the result of an earlier one was committed")
            item.poll = self._schedule_call(item.task.id) if item.task.kind == SCHEDULE else None
            if item.poll in self.polled:
                self._fail([], f"node {item.task.node_id}: schedule call {item.poll[1] + 1} handed out again "  # type: ignore[index]
                           "although its result was committed")
            # Even a runner that lost its lease and goes on hands out user code only while it holds
            # the task (applying a result takes the lease again, or drops the result if another
            # runner has the task): the next node's code runs once, however the runners interleave.
            item.epoch = self.epoch
            self.running.append(item)
        self._absorb()

    def _schedule_call(self, task_id: str) -> tuple[str, int] | None:
        """(schedule, times) of a schedule task's call: which call of its schedule it is."""
        with self.engine.store.reading() as unit:
            task = unit.get_task(task_id)
            sched = unit.get_schedule(task.schedule_id) if task is not None and task.schedule_id else None
            return (sched.id, sched.times) if sched is not None else None

    def _times(self, schedule_id: str) -> int | None:
        with self.engine.store.reading() as unit:
            sched = unit.get_schedule(schedule_id)
            return sched.times if sched is not None else None

    def _advance(self, step: Any, item: Item) -> UserCall | None:
        """``item``'s share of a batch transaction: the engine loop's own step for one item
        (:func:`culm.core.loop.advance`); the user code it handed out, if any."""
        self.engine.owner = item.owner  # this item's runner takes and keeps the leases
        item.call = loop.advance(self.engine, step, item)
        return item.call

    def _do_user(self) -> None:
        item = self.rng.choice(self.running)
        self.running.remove(item)
        call = item.call
        assert call is not None
        if item.task.kind == EXECUTE:
            invoke = item.invoke
            assert invoke is not None
            key = (invoke.node_id, invoke.version)
            self.steps.append(f"user execute {invoke.node_id} {invoke.version} #{item.number}")
            if item.epoch >= 0 and self.executed.get(key) == item.epoch:
                self._fail([], f"node {invoke.node_id} version {invoke.version} executed twice without a crash")

            self.executed[key] = item.epoch
        else:
            self.steps.append(f"user schedule {item.task.node_id}")
        try:
            outcome = call.run()
        except BaseException as exc:  # noqa: BLE001 - as the runners do: the exception is the outcome
            outcome = exc
        call.returned(outcome)
        self.ready.append(item)

    def _do_control(self) -> None:
        op = fire(self.runtime, self.storm, self.rng)
        self.steps.append(f"control {self.storm.calls[-1] if op != 'breathe' else op}")
        self._absorb()

    def _do_timer(self) -> None:
        later = min(i.task.due for i in self.ready if not self._due(i))
        self.steps.append(f"timer -> +{later - self.clock.at:.2f}s")
        self.clock.at = max(self.clock.at, later)

    def _do_lease(self) -> None:
        """Time passes beyond every lease; another runner sweeps and takes over what it finds."""
        self.epoch += 1
        self.runner += 1
        self.clock.at += LEASE_SECONDS + 1
        found = self._stored_tasks(leases_over=True)
        self.steps.append(f"lease expiry: {len(found)} tasks taken over")
        self.ready += [self._item(t) for t in found]

    def _do_sweep(self) -> None:
        known = {i.task.id for i in self.ready + self.running}
        found = [t for t in self._stored_tasks(leases_over=True) if t.id not in known]
        self.steps.append(f"sweep: {len(found)} new")
        self.ready += [self._item(t) for t in found]

    def _do_crash(self) -> None:
        self.steps.append("CRASH between steps")
        self._restart()
        self._recover()

    def _restart(self) -> None:
        """The process dies: what it held in memory is gone (an open transaction among it); a new
        process opens the same database with a new engine (no cached graphs, roots or state trees)."""
        self.epoch += 1
        self.runner += 1
        self.ready, self.running = [], []
        self.inline.drop()
        store = self.runtime.store
        if isinstance(store, MemoryStore):
            store = self.runtime.store = store.reopen()  # keeps exactly what was committed
        # (SQLite in memory cannot be reopened: the exception that ends the step rolls it back.)
        self.engine = self.runtime.engine = Engine(store, self.inline, self.settings)

    def _recover(self) -> None:
        """A new runner voids the leases and sweeps the task table."""
        with self.engine.store.transaction() as unit:
            unit.release_leases()
        self.ready = [self._item(t) for t in self._stored_tasks(leases_over=True)]

    def _stored_tasks(self, leases_over: bool = False) -> list[TaskRecord]:
        if not leases_over:
            return [t for snap in read_snapshots(self.engine, self.storm.roots).values() for t in snap.tasks]
        with self.engine.store.reading() as unit:
            return list(unit.pending_tasks(self.clock.at, 100_000, horizon=1e9))

    def _item(self, task: TaskRecord) -> Item:
        self.items += 1
        return Item(task, number=self.items, owner=f"runner-{self.runner}")

    def _absorb(self) -> None:
        known = {i.task.id for i in self.ready + self.running}
        for task in self.inline.take():
            if task.id not in known:
                known.add(task.id)
                self.ready.append(self._item(task))

    # -- checking --------------------------------------------------------------------------
    def _check(self, what: str) -> None:
        fresh, self.feed_seq = self.engine.store.feed.transitions(after=self.feed_seq)
        found = check_transitions(fresh, self.last_states)
        for snap in read_snapshots(self.engine, self.storm.roots).values():
            found += check(snap)
        found += self._callback_order()
        found += self._kept_trees_current()
        if found:
            self._fail(found, f"after {what}")
        if self.trace:
            print(self.steps[-1] if self.steps else what)

    def _kept_trees_current(self) -> list[Violation]:
        """A poller's kept state trees (the engine's, read after every step) give what a full read
        gives, wait reasons included: every write those look at is in the change feed."""
        found = []
        for root in self.storm.roots:
            kept = _without_texts(queries.pipeline_states(self.engine, root))
            poller, self.engine.state_trees = self.engine.state_trees, StateTrees()
            try:
                full = _without_texts(queries.pipeline_states(self.engine, root))
            finally:
                self.engine.state_trees = poller
            if kept != full:
                differ = sorted(n for n in {*kept.get(root, {}).get("children", {}), root}
                                if _entry(kept, root, n) != _entry(full, root, n))
                found.append(Violation("kept-tree", root, f"a poll differs from a full read at {differ}: "
                                       f"{[_entry(kept, root, n) for n in differ]} != {[_entry(full, root, n) for n in differ]}"))
        return found

    def _callback_order(self) -> list[Violation]:
        """A multiple-callback node's ``schedule()`` saw its run's callbacks in the order they were
        accepted: every callback the storm sends carries a greater ``n`` than the one before, so the
        ``received`` of each run rises (a crash or a lease expiry may run a call again, never apply
        it twice or out of turn)."""
        found = []
        with self.engine.store.reading() as unit:
            for node_id in self.storm.multis:
                got = (unit.get_execution_data(node_id) or ({}, {}))[1].get("received") or []
                if any(a >= b for a, b in zip(got, got[1:], strict=False)):
                    found.append(Violation("callback_order", node_id,
                                           f"schedule() saw callbacks {got}: not in the order they were accepted"))
        return found

    def _fail(self, found: list[Violation], when: str) -> None:
        tail = "\n  ".join(self.steps[-25:])
        raise SimulationFailure(f"seed {self.seed}, step {len(self.steps)}, {when}: "
                                + "; ".join(map(str, found)) + f"\nlast steps:\n  {tail}")


def _without_texts(data: dict[str, Any]) -> dict[str, Any]:
    """A state tree with its wait reasons' texts left out (a text may name seconds of the wall
    clock, which moves between two reads)."""
    for root_entry in data.values():
        for entry in (root_entry, *root_entry["children"].values()):
            if entry["wait_reason"] is not None:
                entry["wait_reason"] = {k: v for k, v in entry["wait_reason"].items() if k != "text"}
    return data


def _entry(data: dict[str, Any], root: str, node_id: str) -> Any:
    root_entry = data.get(root, {})
    return root_entry if node_id == root else root_entry.get("children", {}).get(node_id)


@contextlib.contextmanager
def quiet_engine() -> Iterator[None]:
    """The engine's warnings off: node timeouts fired and stale results dropped after simulated
    lease losses are what a storm is made of, by the thousand, not news."""
    logger = logging.getLogger("culm.engine")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_seeds(seeds: list[int], **options: Any) -> tuple[list[tuple[int, str]], int]:
    """Run ``seeds``; returns the failures (seed, message) and the total number of steps."""
    failures: list[tuple[int, str]] = []
    total = 0
    for seed in seeds:
        try:
            total += Simulation(seed, **options).run()
        except SimulationFailure as exc:
            failures.append((seed, str(exc)))
    return failures, total


def replay_command(seed: int, *, storm_steps: int = 120, pipelines: int = 3, backend: str = "memory",
                   **_: Any) -> str:
    """The command that replays ``seed`` step by step with these options."""
    extra = "".join([f" --steps={storm_steps}" if storm_steps != 120 else "",
                     f" --pipelines={pipelines}" if pipelines != 3 else "",
                     " --sqlite" if backend == "sqlite" else ""])
    return f"python tests/integration/simulation.py {seed} --trace{extra}"


def parse_seeds(spec: str) -> list[int]:
    """``"1-2000"`` or ``"3,7,10-12"`` -> the seeds."""
    seeds: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        seeds += range(int(lo), int(hi or lo) + 1)
    return seeds


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    spec = args[0] if args else "1-100"
    trace = "--trace" in argv
    options: dict[str, Any] = {"backend": "sqlite" if "--sqlite" in argv else "memory"}
    for arg in argv:
        name, _, value = arg.partition("=")
        if name in ("--steps", "--pipelines"):
            options["storm_steps" if name == "--steps" else "pipelines"] = int(value)
    seeds = parse_seeds(spec)
    started = time.perf_counter()
    if trace:
        for seed in seeds:
            print(f"seed {seed}: {Simulation(seed, trace=True, **options).run()} steps")
        return 0
    with quiet_engine():
        failures, total = run_seeds(seeds, **options)
    took = time.perf_counter() - started
    for seed, message in failures[:5]:
        print(message, f"\nreplay: {replay_command(seed, **options)}\n")
    print(f"{len(seeds) - len(failures)}/{len(seeds)} seeds passed, {total} steps, {took:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
