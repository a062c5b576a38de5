"""The app of test_crash_points.py: ``python crash_points_app.py MODE DB WORKERS [ROOT...]``.

Every user-code call is recorded durably (appended and fsync'd to ``$CRASH_LOG``) before it
returns, as ``<kind> <node id> <extra>``, so a test counts what ran, crash or not.

Modes that run until killed, after printing their pipeline ids as a JSON list:

``poll``      pipelines whose activity polls POLLS times, 10 ms apart
``callback``  pipelines waiting for a callback, then an activity; a thread calls every waiting
              node back and records ``acked <node>`` once ``api.callback`` returned
``pause``     chains of 10 ms activities; a thread pauses and resumes them at random
``submit``    (prints nothing first) submits small pipelines one after another, recording
              ``submit <root>`` before ``run_pipeline`` and ``ok <root>`` once it returned

``finish ROOT...`` reopens the file, calls back the waiting nodes no ``acked`` line names, resumes
the paused pipelines (an operator's part), and waits until every root has FINISHED; it prints
``{"unfinished": [...], "seconds": ...}``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from typing import Any

from storm_ops import chain
from support import wait_until

import culm
from culm import api
from culm.builder import ServiceActivity, Var, build_tree
from culm.components import Component, Service, StaticIntervalGenerator

LOG = os.environ.get("CRASH_LOG", "")
POLLS = 20
CHAIN = 12  # activities of a ``pause`` pipeline


def record(*words: object) -> None:
    """Append one line to the log and make it durable before going on."""
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (" ".join(map(str, words)) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


class RecordService(Service):
    def execute(self, data: Any, parent_data: Any) -> bool:
        record("exec", self.id, self.version)
        time.sleep(float(data.get_one_of_inputs("seconds", 0) or 0))
        return True


class PollService(Service):
    __need_schedule__ = True
    interval = StaticIntervalGenerator(0.01)

    def execute(self, data: Any, parent_data: Any) -> bool:
        record("exec", self.id, self.version)
        data.set_outputs("polls", 0)
        return True

    def schedule(self, data: Any, parent_data: Any, callback_data: Any = None) -> bool:
        polls = int(data.get_one_of_outputs("polls", 0) or 0) + 1
        record("sched", self.id, polls)
        data.set_outputs("polls", polls)
        if polls >= POLLS:
            self.finish_schedule()
        return True


class CallbackService(Service):
    __need_schedule__ = True

    def execute(self, data: Any, parent_data: Any) -> bool:
        record("exec", self.id, self.version)
        return True

    def schedule(self, data: Any, parent_data: Any, callback_data: Any = None) -> bool:
        record("sched", self.id, self.version)
        data.outputs.got = callback_data
        return True


class RecordComponent(Component):
    code = name = "cp_rec"
    bound_service = RecordService


class PollComponent(Component):
    code = name = "cp_poll"
    bound_service = PollService


class CallbackComponent(Component):
    code = name = "cp_cb"
    bound_service = CallbackService


def activity(code: str, seconds: float = 0.0) -> ServiceActivity:
    act = ServiceActivity(component_code=code)
    act.component.inputs.seconds = Var(type=Var.PLAIN, value=seconds)
    return act


def chain_of(*acts: ServiceActivity) -> dict:
    return build_tree(chain(*acts))


TREES = {
    "poll": lambda: chain_of(activity("cp_poll")),
    "callback": lambda: chain_of(activity("cp_cb"), activity("cp_rec")),
    "pause": lambda: chain_of(*(activity("cp_rec", 0.01) for _ in range(CHAIN))),
    "submit": lambda: chain_of(activity("cp_rec"), activity("cp_rec")),
}


def waiting_callbacks(runtime: culm.Runtime, root: str) -> dict[str, str]:
    """{node: version} of the nodes of ``root`` that wait for a callback."""
    res = api.get_pipeline_states(runtime, root)
    if not res.result:
        return {}
    return {n: e["wait_reason"]["version"] for n, e in res.data[root]["children"].items()
            if (e.get("wait_reason") or {}).get("kind") == "callback"}


def call_back_forever(runtime: culm.Runtime, roots: list[str]) -> None:
    while True:
        for root in roots:
            for node, version in waiting_callbacks(runtime, root).items():
                if api.callback(runtime, node, version, {"from": node}).result:
                    record("acked", node)
        time.sleep(0.005)


def pause_and_resume_forever(runtime: culm.Runtime, roots: list[str]) -> None:
    rng = random.Random(os.getpid())
    while True:
        root = rng.choice(roots)
        if api.pause_pipeline(runtime, root).result:
            time.sleep(rng.uniform(0, 0.03))
            api.resume_pipeline(runtime, root)
        time.sleep(rng.uniform(0, 0.01))


def submit_forever(runtime: culm.Runtime) -> None:
    while True:
        tree = TREES["submit"]()
        record("submit", tree["id"])
        assert api.run_pipeline(runtime, tree).result
        record("ok", tree["id"])


def finish(runtime: culm.Runtime, roots: list[str]) -> None:
    acked = set()
    if os.path.exists(LOG):
        with open(LOG) as fh:
            acked = {w[1] for w in (line.split() for line in fh) if w and w[0] == "acked"}
    began = time.monotonic()

    def left() -> list[str]:
        out = []
        for root in roots:
            state = api.get_pipeline_states(runtime, root).data[root]["state"]
            if state == "SUSPENDED":
                api.resume_pipeline(runtime, root)  # a pause the operator meant to end
            for node, version in waiting_callbacks(runtime, root).items():
                if node not in acked:  # the caller never heard back: it calls again
                    api.callback(runtime, node, version, {"from": node})
            if state != "FINISHED":
                out.append(root)
        return out

    try:
        wait_until(lambda: not left(), 30, 0.05, what="every pipeline to finish")
    except AssertionError:
        pass
    print(json.dumps({"unfinished": left(), "seconds": round(time.monotonic() - began, 3)}), flush=True)


def main() -> None:
    mode, db, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    runtime = culm.Runtime(db, workers=workers)
    if mode == "finish":
        finish(runtime, sys.argv[4:])
        runtime.close()
        return
    if mode == "submit":
        submit_forever(runtime)
    trees = [TREES[mode]() for _ in range(int(os.environ.get("CRASH_PIPELINES", "20")))]
    for tree in trees:
        assert api.run_pipeline(runtime, tree).result
    roots = [t["id"] for t in trees]
    print(json.dumps(roots), flush=True)
    if mode == "callback":
        threading.Thread(target=call_back_forever, args=(runtime, roots), daemon=True).start()
    elif mode == "pause":
        threading.Thread(target=pause_and_resume_forever, args=(runtime, roots), daemon=True).start()
    time.sleep(3600)


if __name__ == "__main__":
    main()
