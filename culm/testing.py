"""Testing helpers shipped with culm: an in-memory runtime and component test harnesses.

``memory_runtime()`` is a real culm runtime on the memory store (``Runtime("memory://")``: nothing
touches the disk, nothing outlives the runtime), and ``run_until_done`` waits for a pipeline with a bounded poll. The component harness
(``ComponentTestMixin`` and friends, ``run_component``) tests one component without a pipeline.
"""

from __future__ import annotations

import time
from typing import Any
from unittest import mock

from culm import api
from culm.components.testing import (
    CallAssertion,
    ComponentRun,
    ComponentTestCase,
    ComponentTestMixin,
    ExecuteAssertion,
    Patcher,
    ScheduleAssertion,
    assert_component_cases,
    run_component,
)
from culm.core import states
from culm.runtime import Runtime

Call = mock.call


def memory_runtime(workers: int = 4) -> Runtime:
    """A runtime on the memory store with its own worker threads; close it when done."""
    return Runtime("memory://", workers=workers)


def pipeline_state(runtime: Runtime, root_id: str) -> str | None:
    """The state name of a root pipeline, None when it is unknown."""
    data = api.get_pipeline_states(runtime, root_id).data or {}
    entry = data.get(root_id)
    return entry["state"] if entry else None


def failed_nodes(runtime: Runtime, root_id: str) -> dict[str, Any]:
    """``{node_id: ex_data}`` for every FAILED node of a pipeline."""
    data = api.get_pipeline_states(runtime, root_id).data or {}
    children = data.get(root_id, {}).get("children", {})
    return {
        node_id: api.get_execution_data_outputs(runtime, node_id).data.get("ex_data")
        for node_id, entry in children.items()
        if entry["state"] == states.FAILED
    }


def run_until_done(runtime: Runtime, pipeline: dict[str, Any], timeout: float = 10.0, **kwargs: Any) -> str:
    """Run a tree and wait (bounded) until it FINISHED, was REVOKED, or a node FAILED.

    Returns:
        ``"FINISHED"``, ``"REVOKED"`` or ``"FAILED"`` (some node failed; the pipeline itself stays
        RUNNING, as in bamboo).

    Raises:
        AssertionError: The run was refused, or nothing settled within ``timeout`` seconds.
    """
    res = api.run_pipeline(runtime, pipeline, **kwargs)
    if not res.result:
        raise AssertionError(f"run_pipeline refused: {res.message}")
    root_id = pipeline["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = pipeline_state(runtime, root_id)
        if state in (states.FINISHED, states.REVOKED):
            return state
        if failed_nodes(runtime, root_id):
            return states.FAILED
        time.sleep(0.01)
    raise AssertionError(f"pipeline {root_id} did not settle within {timeout} s (state {pipeline_state(runtime, root_id)})")


__all__ = [
    "memory_runtime", "pipeline_state", "failed_nodes", "run_until_done",
    "ComponentTestMixin", "ComponentTestCase", "ExecuteAssertion", "ScheduleAssertion", "CallAssertion",
    "Patcher", "Call", "assert_component_cases", "run_component", "ComponentRun",
]
