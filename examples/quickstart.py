"""The quick start: start -> example_component -> end, on an embedded runtime.

Run it as ``python examples/quickstart.py`` (a fresh SQLite file in a temporary folder), or
``culm run examples/quickstart.py``, which uses :func:`build_pipeline`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree


def build_pipeline() -> dict:
    """The tree of the quick start; ids are fresh on every call."""
    start = EmptyStartEvent(name="start")
    # example_component ships with culm: it does nothing and succeeds.
    act = ServiceActivity(component_code="example_component", name="example")
    end = EmptyEndEvent(name="end")
    start.extend(act).extend(end)
    return build_tree(start)


def wait_for_end(runtime: culm.Runtime, root_id: str, timeout: float = 30.0) -> str:
    """Poll the pipeline's state until it is FINISHED or REVOKED; return the last state seen."""
    deadline = time.monotonic() + timeout
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        states = api.get_pipeline_states(runtime, root_id).data
        state = states[root_id]["state"] if states else "UNKNOWN"
        if state in ("FINISHED", "REVOKED"):
            break
        time.sleep(0.05)
    return state


def in_order(pipeline: dict) -> list[tuple[str, dict]]:
    """The nodes of this linear tree from its start event on: ``[(id, node)]``."""
    nodes = {pipeline["start_event"]["id"]: pipeline["start_event"], pipeline["end_event"]["id"]: pipeline["end_event"],
             **pipeline["activities"]}
    order, node_id = [], pipeline["start_event"]["id"]
    while node_id in nodes:
        order.append((node_id, nodes[node_id]))
        flow = pipeline["flows"].get(nodes[node_id]["outgoing"] or "")
        node_id = flow["target"] if flow else ""
    return order


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, culm.Runtime(f"sqlite:///{Path(tmp) / 'quickstart.db'}") as runtime:
        pipeline = build_pipeline()
        result = api.run_pipeline(runtime=runtime, pipeline=pipeline)
        assert result.result, result.message
        state = wait_for_end(runtime, pipeline["id"])
        root = api.get_pipeline_states(runtime=runtime, root_id=pipeline["id"]).data[pipeline["id"]]
        for node_id, node in in_order(pipeline):
            print(f"  {root['children'][node_id]['state']:<9} {node['name']} ({node['type']})")
        print(f"pipeline {pipeline['id']} {state}")
        return 0 if state == "FINISHED" else 1


if __name__ == "__main__":
    raise SystemExit(main())
