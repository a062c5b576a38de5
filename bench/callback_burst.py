"""A burst of callbacks to one multiple-callback node: wall time from the first callback to FINISHED.

    python -m bench.callback_burst [N] [DATABASE_URL [BROKER_URL]]

N callbacks (default 50), then one with ``done``; the order ``schedule()`` saw them in is checked.
Without a broker the runtime is embedded (default ``sqlite:///:memory:``); with one, workers must
run with ``CULM_IMPORTS=components`` and ``tests/integration`` on their ``PYTHONPATH`` (the
component is the tests' ``t_multi_callback``), and ``$CULM_QUEUE_PREFIX`` names their prefix.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests")]

import components  # noqa: E402,F401 - registers t_multi_callback

import culm  # noqa: E402
from culm import api  # noqa: E402
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree  # noqa: E402


def _wait(what: str, ok: object, limit: float = 300.0) -> None:
    began = time.monotonic()
    while not ok():  # type: ignore[operator]
        if time.monotonic() - began > limit:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 50
    url = argv[1] if len(argv) > 1 else "sqlite:///:memory:"
    broker = argv[2] if len(argv) > 2 else None
    prefix = os.environ.get("CULM_QUEUE_PREFIX", "culm")
    rt = culm.Runtime(url, broker=broker, prefix=prefix) if broker else culm.Runtime(url)
    start, act, end = EmptyStartEvent(), ServiceActivity(component_code="t_multi_callback"), EmptyEndEvent()
    start.extend(act).extend(end)
    tree = build_tree(start)
    assert api.run_pipeline(rt, tree).result
    _wait("the node to wait", lambda: api.get_execution_data_outputs(rt, act.id).data.get("_result") is True)
    version = api.get_children_states(rt, act.id).data[act.id]["version"]
    began, cpu = time.monotonic(), time.process_time()
    for i in range(n):
        assert api.callback(rt, act.id, version, {"n": i}).result
    assert api.callback(rt, act.id, version, {"n": n, "done": True}).result
    _wait("FINISHED", lambda: api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["state"] == "FINISHED")
    wall = time.monotonic() - began
    assert api.get_execution_data_outputs(rt, act.id).data["received"] == list(range(n + 1))
    print(f"burst of {n}+1 callbacks: {wall:.2f} s wall, {time.process_time() - cpu:.2f} s CPU (this process), "
          "in order")
    rt.close()


if __name__ == "__main__":
    main(sys.argv[1:])
