"""A small app for the kill -9 tests: run as ``python crash_app.py MODE DB LOG [TREE_ID]``.

``start`` builds and starts a pipeline, prints its tree id, then keeps running until killed.
``resume`` opens the same database and waits until the pipeline is FINISHED, printing the state.
``callback`` starts a pipeline with a callback node, calls back once it waits, then kills itself.
``batch N WORKERS`` starts N pipelines of instant activities on WORKERS user-code threads, prints
their ids as a JSON list, then keeps running until killed.
``serve`` holds the runner lock (printing ``ready``) until a line comes on stdin, then closes (printing
``closing`` first).
``resume_all WORKERS ROOT...`` opens the database on WORKERS threads and waits until every root is
FINISHED, printing how many are not and how long it took.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from culm_dist_components import hold_at_gate
from support import wait_until

import culm
from culm import api
from culm.builder import (
    ConvergeGateway,
    EmptyEndEvent,
    EmptyStartEvent,
    ParallelGateway,
    ServiceActivity,
    Var,
    build_tree,
)
from culm.components import Component, Service

LOG = os.environ.get("CRASH_LOG", "")
# Set by a kill test: calls past the first HOLD_AFTER wait at this gate until it is opened.
GATE = os.environ.get("CRASH_GATE", "")
HOLD_AFTER = int(os.environ.get("CRASH_HOLD_AFTER", "0"))


class SlowService(Service):
    """Sleeps a little and logs one line per execution (node id, version, process id)."""

    def execute(self, data: Any, parent_data: Any) -> bool:
        with open(LOG, "a") as fh:
            fh.write(f"start {self.id} {self.version} {os.getpid()}\n")
        if GATE:
            hold_at_gate(GATE, HOLD_AFTER)
        time.sleep(float(data.get_one_of_inputs("seconds", 0.05)))
        with open(LOG, "a") as fh:
            fh.write(f"done {self.id} {self.version} {os.getpid()}\n")
        return True


class SlowComponent(Component):
    code = "crash_slow"
    name = "slow"
    bound_service = SlowService


class WaitService(Service):
    __need_schedule__ = True

    def execute(self, data: Any, parent_data: Any) -> bool:
        return True

    def schedule(self, data: Any, parent_data: Any, callback_data: Any = None) -> bool:
        data.outputs.got = callback_data
        return True


class WaitComponent(Component):
    code = "crash_wait"
    name = "wait"
    bound_service = WaitService


def slow(seconds: float = 0.05) -> ServiceActivity:
    act = ServiceActivity(component_code="crash_slow")
    act.component.inputs.seconds = Var(type=Var.PLAIN, value=seconds)
    return act


def chain_with_parallel() -> dict:
    start, end = EmptyStartEvent(), EmptyEndEvent()
    pg, cg = ParallelGateway(), ConvergeGateway()
    tail: Any = start
    for _ in range(6):
        tail = tail.extend(slow())
    branches = []
    for _ in range(3):
        head = slow()
        head.extend(slow())
        branches.append(head)
    tail.extend(pg).connect(*branches).converge(cg)
    tail = cg
    for _ in range(6):
        tail = tail.extend(slow())
    tail.extend(end)
    return build_tree(start)


def batch_tree_of(code: str, **inputs: Any) -> dict:
    """Eight instant activities of component ``code`` (with plain ``inputs``, ``seconds`` 0 by
    default): two in a row, three in parallel, three in a row."""

    def act() -> ServiceActivity:
        node = ServiceActivity(component_code=code)
        for key, value in {"seconds": 0.0, **inputs}.items():
            setattr(node.component.inputs, key, Var(type=Var.PLAIN, value=value))
        return node

    start, end = EmptyStartEvent(), EmptyEndEvent()
    pg, cg = ParallelGateway(), ConvergeGateway()
    tail = start.extend(act()).extend(act()).extend(pg).connect(act(), act(), act()).converge(cg)
    tail.extend(act()).extend(act()).extend(act()).extend(end)
    return build_tree(start)


def batch_tree() -> dict:
    return batch_tree_of("crash_slow")


def callback_tree() -> dict:
    start, wait, end = EmptyStartEvent(), ServiceActivity(component_code="crash_wait"), EmptyEndEvent()
    start.extend(wait).extend(slow(0.0)).extend(end)
    return build_tree(start)


def finished_within(predicate: Any, timeout: float, what: str) -> bool:
    """Whether ``predicate`` came true within ``timeout`` (this app reports it rather than failing)."""
    try:
        wait_until(predicate, timeout, 0.02, what=what)
    except AssertionError:
        return False
    return True


def main() -> None:
    mode, db = sys.argv[1], sys.argv[2]
    if mode in ("batch", "resume_all"):
        batch_main(mode, db, sys.argv[3:])
        return
    runtime = culm.Runtime(db)
    if mode == "serve":
        print("ready", flush=True)
        sys.stdin.readline()
        print("closing", flush=True)  # a test may now let a call it holds return (see CRASH_GATE)
        runtime.close()
    elif mode == "start":
        tree = chain_with_parallel()
        assert api.run_pipeline(runtime, tree).result
        print(tree["id"], flush=True)
        time.sleep(3600)
    elif mode == "callback":
        tree = callback_tree()
        assert api.run_pipeline(runtime, tree).result
        wait_id = tree["start_event"]["outgoing"]
        wait_id = tree["flows"][wait_id]["target"]

        def waiting() -> bool:
            data = api.get_pipeline_states(runtime, tree["id"]).data
            return bool(data) and data[tree["id"]]["children"].get(wait_id, {}).get("state") == "RUNNING"

        wait_until(waiting, 10, 0.02, what="the callback node to wait")
        version = api.get_pipeline_states(runtime, tree["id"]).data[tree["id"]]["children"][wait_id]["version"]
        # Stop the workers first, so the callback is only acknowledged, never processed here.
        runtime.dispatcher.close()
        res = api.callback(runtime, wait_id, version, {"k": 1})
        print(json.dumps({"id": tree["id"], "wait": wait_id, "ok": res.result}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "resume":
        root = sys.argv[3]

        def finished() -> bool:
            data = api.get_pipeline_states(runtime, root).data
            return bool(data) and data[root]["state"] == "FINISHED"

        ok = finished_within(finished, 30, f"pipeline {root} to finish")
        print(json.dumps({"finished": ok}), flush=True)
        runtime.close()


def batch_main(mode: str, db: str, args: list[str]) -> None:
    if mode == "batch":
        count, workers = int(args[0]), int(args[1])
        runtime = culm.Runtime(db, workers=workers)
        trees = [batch_tree() for _ in range(count)]
        for tree in trees:
            assert api.run_pipeline(runtime, tree).result
        print(json.dumps([t["id"] for t in trees]), flush=True)
        time.sleep(3600)
    runtime = culm.Runtime(db, workers=int(args[0]))
    roots, began = args[1:], time.monotonic()

    def left() -> list[str]:
        return [r for r in roots if api.get_pipeline_states(runtime, r).data[r]["state"] != "FINISHED"]

    finished_within(lambda: not left(), 60, "every pipeline to finish")
    print(json.dumps({"unfinished": len(left()), "seconds": round(time.monotonic() - began, 3)}), flush=True)
    runtime.close()


if __name__ == "__main__":
    main()
