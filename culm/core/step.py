"""A Step is one transaction plus the effects that may only happen after it commits."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from culm.core import observe, signals
from culm.core.ports import StateFields, Unit
from culm.core.records import StateRecord, TaskRecord
from culm.core.transitions import NEXT, NOWHERE, IllegalTransitionError


@dataclass(frozen=True, slots=True)
class Join:
    """A child process that reached its converge gateway (``node_id``) in this transaction."""

    parent_id: str
    child_id: str
    node_id: str


@dataclass
class Step:
    """Collects follow-up tasks, signals and hooks while a transaction is open."""

    unit: Unit
    tasks: list[TaskRecord] = field(default_factory=list)
    joins: list[Join] = field(default_factory=list)  # counted before the commit (joins.settle)
    events: list[tuple[signals.Signal, dict[str, Any]]] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)
    began: float = field(default_factory=time.perf_counter)
    # (node id, version) of runs a node timeout failed in this transaction: user code of theirs
    # still running is cut off (culm.core.timeouts); a runner may take its thread back.
    cut_off: list[tuple[str, str]] = field(default_factory=list)

    def add_task(self, task: TaskRecord) -> None:
        self.unit.insert_tasks([task])
        self.tasks.append(task)

    def add_tasks(self, tasks: list[TaskRecord]) -> None:
        self.unit.insert_tasks(tasks)
        self.tasks.extend(tasks)

    def requeue(self, task_id: str) -> None:
        """Hand a task row this transaction changed (and did not delete) to the dispatcher again."""
        task = self.unit.get_task(task_id)
        if task is not None:
            self.tasks.append(task)

    def set_state(
        self, st: StateRecord, to: str, fields: StateFields | None = None, *,
        expect: Collection[str] | None = None, versioned: bool = True, loop: int = -1, signal: bool = True,
    ) -> bool:
        """Change the state of ``st``'s node to ``to`` (writing ``fields`` with it) if its version
        (unless not ``versioned``: the caller holds the row) and its name (when ``expect`` names the
        states it may be in) are still what was read; False when they are not.

        The one place a state name changes: the transition is checked against the table first
        (IllegalTransitionError), then written, applied to ``st`` and recorded in the change feed,
        with ``post_set_state`` after the commit unless ``signal`` is False.
        """
        # The row changes from one of ``expect`` (the write does not happen from any other name),
        # else from the name read. (transitions.check, inlined: every state write pays for it.)
        for name in (st.name,) if expect is None else expect:
            if to not in NEXT.get(name, NOWHERE):
                raise IllegalTransitionError(st.node_id, name, to)
        version = st.version if versioned else None
        if fields is None:
            written = self.unit.update_state(st.node_id, expect_version=version, expect_names=expect, name=to)
        else:
            written = self.unit.update_state(st.node_id, expect_version=version, expect_names=expect, name=to,
                                             **fields)
        if not written:
            return False
        was = st.name if expect is None or st.name in expect else next(iter(expect))
        st.name = to
        if fields is not None:
            for k, v in fields.items():
                setattr(st, k, v)
        # As state_changed does, without its two calls: every state write pays for them.
        self.unit.record_change(st.root_id, st.node_id, was, to, st.version, st.loop)
        if signal and signals.post_set_state.has_receivers:
            self._signal_state(st, loop)
        return True

    def create_state(self, st: StateRecord, loop: int = -1) -> None:
        """Write the first state row of a node (checked like any transition, from nothing)."""
        if st.name not in NEXT[None]:
            raise IllegalTransitionError(st.node_id, None, st.name)
        unit = self.unit
        unit.insert_state(st)
        # As state_changed does, without its call: every node entered the first time pays for it.
        unit.record_change(st.root_id, st.node_id, None, st.name, st.version, st.loop)
        if signals.post_set_state.has_receivers:
            self._signal_state(st, loop)

    def state_changed(
        self, st: StateRecord, loop: int = -1, *, from_state: str | None = None, root_id: str | None = None
    ) -> None:
        """A state write: recorded in the change feed, then ``post_set_state`` after the commit.

        ``from_state``: the state before the write (None: created); ``root_id``: the run's root when
        the record does not carry it yet (a state created ahead of the node being reached).
        """
        self.unit.record_change(root_id or st.root_id, st.node_id, from_state, st.name, st.version, st.loop)
        if signals.post_set_state.has_receivers:
            self._signal_state(st, loop)

    def _signal_state(self, st: StateRecord, loop: int) -> None:
        """Queue ``post_set_state`` for the write just made to ``st``, sent after the commit."""
        parent = "" if st.node_id == st.root_id else st.parent_id
        self.events.append(
            (
                signals.post_set_state,
                {
                    "node_id": st.node_id, "to_state": st.name, "version": st.version,
                    "root_id": st.root_id, "parent_id": parent, "loop": loop,
                },
            )
        )

    def note(self, st: StateRecord) -> None:
        """Tell the change feed's readers that ``st``'s row changed without a transition (a field
        the feed does not carry), in this step's transaction: a *note* row, ``from_state`` ==
        ``to_state``, which the kept state trees read and ``runtime.changes`` skips."""
        self.unit.record_change(st.root_id, st.node_id, st.name, st.name, st.version, st.loop)

    def event(self, event_type: str, **data: Any) -> None:
        if signals.pipeline_event.has_receivers:
            self.events.append((signals.pipeline_event, {"event": signals.PipelineEvent(event_type, data)}))

    def fire(self) -> None:
        """Run after-commit effects; nothing here may change the committed outcome."""
        if observe.step_observer is not None:
            observe.step_observer(time.perf_counter() - self.began)
        self.send_signals()
        self.run_after()

    def send_signals(self) -> None:
        """Send the signals of the committed transaction."""
        if not self.events:
            return
        from culm.core.engine import Engine  # the engine imports this module

        for sig, kwargs in self.events:
            # bamboo's senders: the State model class, and the runtime's hook class.
            sig.send(StateRecord if sig is signals.post_set_state else Engine, **kwargs)

    def run_after(self) -> None:
        """Run the after-commit hooks (read-only service hooks)."""
        for fn in self.after:
            try:
                fn()
            except Exception:  # noqa: BLE001 - hooks never change outcomes
                signals.logger.exception("after-commit hook failed")
