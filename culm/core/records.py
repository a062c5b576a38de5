"""Plain records the core reads from and hands to storage. No I/O here."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class _RandomBits:
    """128-bit values from the OS's CSPRNG, read 128 at a time.

    Reading ``os.urandom(16)`` per id is a system call that also lets go of the GIL, and taking the
    GIL back behind a busy thread can cost a thread far more than the call. Each value is handed
    out once: ``next`` on a list iterator is atomic under the GIL, and a forked child drops what
    its parent had read ahead (otherwise both processes would make the same ids).
    """

    BATCH = 128

    def __init__(self) -> None:
        self._values: Iterator[str] = iter(())
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._values = iter(())

    def hex32(self) -> str:
        try:
            return next(self._values)
        except StopIteration:
            text = os.urandom(16 * self.BATCH).hex()
            values = [text[i : i + 32] for i in range(0, len(text), 32)]
            self._values = iter(values[1:])
            return values[0]


_random = _RandomBits()


def new_version() -> str:
    """A fresh opaque state version (33 chars, like bamboo's; 128 random bits)."""
    return "v" + _random.hex32()


def new_id() -> str:
    """A fresh id for processes, tasks, schedules and callbacks (128 random bits, 32 hex chars)."""
    return _random.hex32()


def now() -> float:
    """Wall-clock time as stored in the database (UTC epoch seconds). A function reading the
    module's ``time`` on each call, not ``time.time`` itself: the deterministic simulation
    (tests/integration/simulation.py) puts its own clock there, and with ``now = time.time``
    bound at import every timeout of its 1,000 seeds waited on the real clock (186 of 250 failed)."""
    return time.time()


# The engine's own markers in an end event's stored outputs (culm.core.handlers.events says what
# each guards). Kept by every write of a failure, never shown: the public reads leave them out of an
# end event's outputs (only there: culm.core.queries._shown; an activity's outputs of these names
# are its component's), and update_node_outputs does not take them for an end event.
CODE_RAN = "_end_code_ran"
COPY_REFUSED = "_copy_refused"
ENGINE_MARKERS = (CODE_RAN, COPY_REFUSED)


def public_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    """``outputs`` without the engine's markers (the same dict when it has none)."""
    if not any(key in outputs for key in ENGINE_MARKERS):
        return outputs
    return {key: value for key, value in outputs.items() if key not in ENGINE_MARKERS}


@dataclass(slots=True)
class StateRecord:
    """The state of one node or pipeline."""

    node_id: str
    root_id: str
    parent_id: str
    name: str
    version: str
    loop: int = 1
    inner_loop: int = 1
    retry: int = 0
    skip: bool = False
    error_ignored: bool = False
    created_time: float | None = None
    started_time: float | None = None
    archived_time: float | None = None


@dataclass(frozen=True, slots=True)
class StateChange:
    """One state write, as the change feed records it (see ``Runtime.changes``).

    Attributes:
        seq: position in the feed; grows with every change a database records.
        root_id: the root pipeline the node belongs to.
        node_id: the node (or pipeline) whose state was written.
        from_state: the state before the write, None when unknown or when the state was created.
        to_state: the state written.
        version: the node's version after the write.
        loop: the node's loop after the write.
        time: when the write was made (UTC epoch seconds).
    """

    seq: int
    root_id: str
    node_id: str
    from_state: str | None
    to_state: str
    version: str
    loop: int
    time: float


class Transition(NamedTuple):
    """One state change of one node (``from_state`` None: the row is created), as the engine
    decides it (see ``culm.core.transitions``) and the change feed records it."""

    node_id: str
    from_state: str | None
    to_state: str


class ProcessPosition(NamedTuple):
    """Where a live process stands: what wait reasons read of it (:mod:`culm.core.waits`), and
    all they read: a poll of a running pipeline reads one per branch."""

    id: str
    parent_id: str | None
    current_node_id: str
    destination_id: str | None
    suspended_by: str | None
    ack_num: int
    need_ack: int


@dataclass(slots=True)
class ProcessRecord:
    """A persisted thread of execution walking the graph (not an OS process)."""

    id: str
    root_id: str
    parent_id: str | None
    current_node_id: str
    destination_id: str | None
    stack: list[str]
    asleep: bool = False
    suspended: bool = False
    suspended_by: str | None = None
    dead: bool = False
    ack_num: int = 0
    need_ack: int = 0
    priority: int = 100
    queue: str = ""
    last_heartbeat: float | None = None

    @property
    def top_pipeline_id(self) -> str:
        return self.stack[-1]


EXECUTE = "execute"
SCHEDULE = "schedule"
# A node's deadline (an activity's timeout_config): due when the node has run too long; its
# ``running_version`` is the run it watches (culm.core.timeouts). It runs no user code.
TIMEOUT = "timeout"


@dataclass(slots=True)
class TaskRecord:
    """A unit of durable work: run a process from a node, or run one schedule of a node.

    A task row is written in the same transaction as the change that causes it and deleted in the
    same transaction as the change that completes it, so work is neither lost nor done twice.
    """

    id: str
    kind: str
    process_id: str
    node_id: str
    root_id: str
    schedule_id: str | None = None
    callback_id: str | None = None
    due: float = 0.0
    running_version: str | None = None
    priority: int = 100
    queue: str = ""


@dataclass(slots=True)
class ScheduleRecord:
    """The schedule phase of one activity run (keyed by node and version)."""

    id: str
    node_id: str
    version: str
    process_id: str
    type: str
    finished: bool = False
    expired: bool = False
    times: int = 0
    locked_until: float | None = None


@dataclass(slots=True)
class ContextValue:
    """One variable of a (sub)pipeline context as stored."""

    key: str
    type: str
    value: Any
    code: str | None = None
    references: frozenset[str] = field(default_factory=frozenset)


@dataclass(slots=True)
class HistoryRecord:
    """A snapshot of a node run kept before it is retried, skipped or re-entered."""

    id: int
    node_id: str
    started_time: float | None
    archived_time: float | None
    loop: int
    skip: bool
    retry: int
    version: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    # Stored characters of its inputs and outputs when they were not read (see Histories.histories).
    left_out: int | None = None


@dataclass(frozen=True)
class PipelineQuery:
    """Filters and page of a pipeline list; every filter is optional (None = no filter)."""

    states: tuple[str, ...] | None = None
    name: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One registered worker process, as its row says (times from the database's clock)."""

    owner: str
    host: str
    pid: int
    process_key: str
    threads: int
    prefix: str
    started_time: float
    beat_time: float
    silent_for: float  # seconds since its last beat, on the database's clock

    @property
    def embedded(self) -> bool:
        """An embedded runtime's runner (``culm.Runtime(url)`` on a server database, no broker),
        not a ``culm worker``: it consumes no queue, so its row names no queue prefix."""
        return self.prefix == EMBEDDED_RUNNER

    def as_dict(self) -> dict[str, Any]:
        return {"owner": self.owner, "host": self.host, "pid": self.pid, "threads": self.threads,
                "prefix": self.prefix, "embedded": self.embedded, "started_time": self.started_time,
                "beat_time": self.beat_time, "silent_for": round(self.silent_for, 3)}


# The queue prefix an embedded runner registers with (a worker's --prefix is never empty).
EMBEDDED_RUNNER = ""


def worker_dead_after() -> float:
    """``CULM_WORKER_DEAD_AFTER`` (3 s): a runner whose registry row was not beaten this long is
    taken for dead (a bad value, not a number or not above 0: the default, as ``culm workers``
    reads it). An embedded runner only reads it to tell whether another runner is live."""
    try:
        seconds = float(os.environ.get("CULM_WORKER_DEAD_AFTER") or 3.0)
    except ValueError:
        return 3.0
    return seconds if seconds > 0 else 3.0
