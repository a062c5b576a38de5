"""A process that holds a node's deadline, for the kill -9 test: ``python timeout_app.py DB GATE SECONDS``.

Starts a pipeline whose one activity (``t_gate``, held at gate GATE) has a timeout of SECONDS,
prints ``{"root": ..., "node": ...}`` once the node is RUNNING (its deadline is committed with
that state), then runs until it is killed.
"""

from __future__ import annotations

import json
import sys
import threading

import components  # noqa: F401 - registers t_gate
from support import wait_until

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree


def main(db: str, gate: str, seconds: int) -> None:
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="t_gate",
                          timeout_config={"enable": True, "action": "forced_fail", "seconds": seconds})
    act.component.inputs.gate = Var(type=Var.PLAIN, value=gate)
    start.extend(act).extend(EmptyEndEvent())
    tree = build_tree(start)
    runtime = culm.Runtime(db)
    assert api.run_pipeline(runtime, tree).result

    def running() -> bool:
        entry = api.get_children_states(runtime, act.id).data.get(act.id)
        return bool(entry and entry["state"] == "RUNNING")

    wait_until(running, 20, what="the activity to run")
    print(json.dumps({"root": tree["id"], "node": act.id}), flush=True)
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
