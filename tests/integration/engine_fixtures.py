"""Fixtures and helpers of the engine behaviour tests (``test_engine_*.py``).

Tests use only the public names (``culm.api``, ``culm.builder``, ``culm.components``), so the same
tests can run on another backend by parametrizing the ``runtime`` fixture. Waiting is bounded
polling of the public query API; nothing sleeps a fixed time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import components  # noqa: F401 - registers the t_* components, variables and end events
import pytest
from support import wait_until

import culm
from culm import api, signals

BACKEND_PARAMS = ["sqlite", "memory", "postgres-redis", "mariadb-rabbitmq"]
EMBEDDED = ("sqlite", "memory")  # runtimes whose engine runs in the test's process


@pytest.fixture(autouse=True)
def _fresh_shared_state():
    """Gates and records are files shared with worker processes: start each test with none."""
    components.reset_shared()
    yield


@pytest.fixture(params=BACKEND_PARAMS)
def runtime(request, tmp_path):
    """A runtime on every backend: embedded SQLite (fresh file per test), the memory store (fresh
    per test), or a submitting runtime of a session-wide PostgreSQL + Redis / MariaDB + RabbitMQ
    backend with real worker processes."""
    if request.param in EMBEDDED:
        with embedded_runtime(request.param, tmp_path) as rt:
            yield rt
        return
    yield request.getfixturevalue("backend_pool").shared_runtime(request.param)


@contextlib.contextmanager
def embedded_runtime(kind: str, tmp_path: Any) -> Iterator[culm.Runtime]:
    """An embedded runtime of ``kind`` (one of EMBEDDED): a fresh SQLite file, or a memory store."""
    rt = culm.Runtime(f"sqlite:///{tmp_path}/t.db" if kind == "sqlite" else "memory://")
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture
def hook_calls():
    """The (node_id, hook, callback_data) calls recorded by t_hook components during the test."""
    components.HOOK_CALLS.clear()
    yield components.HOOK_CALLS
    components.HOOK_CALLS.clear()


class Recorder:
    """Collects the keyword arguments of every signal sent while connected."""

    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    # Receivers as Django (and so bamboo) call them: signal and sender first, then named arguments.
    def on_state(self, signal: Any, sender: Any, **kw: Any) -> None:
        self.states.append(kw)

    def on_event(self, signal: Any, sender: Any, event: Any, **kw: Any) -> None:
        self.events.append({"event_type": event.event_type, "data": event.data, **kw})

    def event_types(self) -> list[str]:
        return [e["event_type"] for e in self.events]

    def events_of(self, event_type: str) -> list[dict[str, Any]]:
        return [e["data"] for e in self.events if e["event_type"] == event_type]

    def states_of(self, node_id: str) -> list[str]:
        return [s["to_state"] for s in self.states if s["node_id"] == node_id]


@pytest.fixture
def recorder():
    rec = Recorder()
    signals.post_set_state.connect(rec.on_state)
    signals.pipeline_event.connect(rec.on_event)
    yield rec
    signals.post_set_state.disconnect(rec.on_state)
    signals.pipeline_event.disconnect(rec.on_event)


# -- helpers ---------------------------------------------------------------------------------
def chain(*nodes: Any) -> Any:
    """start -> ``nodes`` one after the other -> end; returns the start event."""
    from culm.builder import EmptyEndEvent, EmptyStartEvent

    start = EmptyStartEvent()
    tail = start
    for n in nodes:
        tail = tail.extend(n)
    tail.extend(EmptyEndEvent())
    return start


def node_state(runtime: Any, node_id: str) -> dict[str, Any] | None:
    """The state entry of any node or pipeline id, or None when it has no state."""
    res = api.get_children_states(runtime, node_id)
    assert res.result, res.message
    return res.data.get(node_id)


def wait_state(runtime: Any, node_id: str, state: str | Iterable[str], timeout: float = 10) -> dict[str, Any]:
    """Wait until ``node_id`` is in ``state`` (one or several); returns its state entry."""
    wanted = {state} if isinstance(state, str) else set(state)
    last: list[Any] = [None]

    def check() -> Any:
        entry = node_state(runtime, node_id)
        last[0] = entry and entry["state"]
        return entry if entry and entry["state"] in wanted else None

    try:
        return wait_until(check, timeout, what=f"{node_id} to be {sorted(wanted)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {last[0]}") from None


def wait_pipeline(runtime: Any, pipeline_id: str, state: str | Iterable[str] = "FINISHED",
                  timeout: float = 10) -> dict[str, Any]:
    """Wait until a pipeline is in ``state``; returns its flat state tree entry."""
    wait_state(runtime, pipeline_id, state, timeout)
    return api.get_pipeline_states(runtime, pipeline_id).data[pipeline_id]


def run(runtime: Any, tree: dict[str, Any], **kwargs: Any) -> str:
    """Start ``tree``, asserting the engine accepted it; returns the pipeline id."""
    res = api.run_pipeline(runtime, tree, **kwargs)
    assert res.result, res.message
    return tree["id"]


def finish(runtime: Any, tree: dict[str, Any], timeout: float = 10, **kwargs: Any) -> dict[str, Any]:
    """Run ``tree`` to FINISHED; returns its flat state tree entry."""
    return wait_pipeline(runtime, run(runtime, tree, **kwargs), "FINISHED", timeout)


def outputs(runtime: Any, node_id: str) -> dict[str, Any]:
    res = api.get_execution_data_outputs(runtime, node_id)
    assert res.result, res.message
    return res.data


def inputs(runtime: Any, node_id: str) -> dict[str, Any]:
    res = api.get_execution_data_inputs(runtime, node_id)
    assert res.result, res.message
    return res.data


def children(runtime: Any, root_id: str) -> dict[str, str]:
    """{node_id: state} of every reached node under ``root_id`` (flat)."""
    entry = api.get_pipeline_states(runtime, root_id).data[root_id]
    return {k: v["state"] for k, v in entry["children"].items()}


def refused(res: Any, *fragments: str) -> None:
    """Assert a refusal whose message names every fragment."""
    assert not res.result, f"expected a refusal, got {res!r}"
    for fragment in fragments:
        assert fragment in res.message, f"{fragment!r} not in message {res.message!r}"


def wait_idle(runtime: Any) -> None:
    """Embedded runtimes: let queued work drain (distributed ones: a no-op)."""
    if hasattr(runtime, "wait_idle"):
        runtime.wait_idle(10)
