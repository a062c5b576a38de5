"""A Step is one transaction plus the effects that may only happen after it commits."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from culm import signals
from culm.core import observe
from culm.core.records import StateRecord, TaskRecord


@dataclass
class Step:
    """Collects follow-up tasks, signals and hooks while a transaction is open."""

    unit: Any
    tasks: list[TaskRecord] = field(default_factory=list)
    events: list[tuple[signals.Signal, dict[str, Any]]] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)
    began: float = field(default_factory=time.perf_counter)

    def add_task(self, task: TaskRecord) -> None:
        self.unit.insert_tasks([task])
        self.tasks.append(task)

    def add_tasks(self, tasks: list[TaskRecord]) -> None:
        self.unit.insert_tasks(tasks)
        self.tasks.extend(tasks)

    def state_changed(self, st: StateRecord, loop: int = -1) -> None:
        if signals.post_set_state.has_receivers:
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

    def event(self, event_type: str, **data: Any) -> None:
        if signals.pipeline_event.has_receivers:
            self.events.append((signals.pipeline_event, {"event_type": event_type, "data": data}))

    def fire(self) -> None:
        """Run after-commit effects; nothing here may change the committed outcome."""
        if observe.step_observer is not None:
            observe.step_observer(time.perf_counter() - self.began)
        for sig, kwargs in self.events:
            sig.send(**kwargs)
        for fn in self.after:
            try:
                fn()
            except Exception:  # noqa: BLE001 - hooks never change outcomes
                signals.logger.exception("after-commit hook failed")
