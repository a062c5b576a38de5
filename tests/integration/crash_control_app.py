"""The app of test_crash_control.py: ``python crash_control_app.py run DB WORKERS SEED [ROOT...]``
(or ``end_render DB GATE``: starts :func:`end_render_tree`, prints its id, waits to be killed; or
``revoke DB N``: :func:`revoke_all_under_way`).

``run`` with no roots builds PIPELINES pipelines (:func:`tree`), starts them and prints their ids
as a JSON list; with roots it reopens the file and carries on with those. Then a thread fires
random control calls at them (:func:`fire`: what an operator would do on what they see, mostly;
the first two pipelines may be revoked) until every pipeline has ended (``ended`` is recorded) or
the process is killed: every call is recorded
(``op <name> <target>`` before it, ``ok <name> <target> <result>`` once it returned) and so is
every user-code call (:func:`record`), appended and fsync'd to ``$CRASH_LOG`` before it returns,
with the process id: a test counts what ran, and what ran again after a kill -9.

A pipeline has what a kill may cut in the middle of (everything the operator can call too):

    start -> loop activity (loop_config, 3 iterations) -> parallel gateway, six branches:
               poll (3 polls) | single callback | multiple callback | flaky (fails until retried
               with ``ok``) | a poll that never ends, cut by its node timeout (1 s, forced fail
               and skip) | subprocess [activity -> flaky -> executable end event]
          -> converge -> exclusive gateway (in every other pipeline its conditions name no
             variable: it fails, and an operator skips it) -> one of two activities -> converge
          -> executable end event
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from typing import Any

import culm
from culm import api
from culm import builder as b
from culm._retry import is_outage
from culm.components import Component, Service, StaticIntervalGenerator
from culm.components.events import ExecutableEndEvent
from culm.components.variables import LazyVariable
from culm.core.invariants import Snapshot
from culm.core.snapshots import read_snapshots

PIPELINES = int(os.environ.get("CRASH_PIPELINES", "12"))
LOOPS = 3


def record(*words: object) -> None:
    """Append one line (and this process's id and group: a ``culm worker``'s pool processes share
    its group) to the log, durable before going on."""
    fd = os.open(os.environ["CRASH_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (" ".join(map(str, (*words, os.getpid(), os.getpgid(0)))) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _pause(data: Any) -> None:
    time.sleep(float(data.get_one_of_inputs("ms", 0) or 0) / 1000)


class PlainService(Service):
    def execute(self, data: Any, parent_data: Any) -> bool:
        record("exec", self.id, self.version)
        _pause(data)
        return True


class FlakyService(Service):
    """Fails unless input ``ok`` is truthy (retry_node with ``{"ok": True}`` makes it pass)."""

    def execute(self, data: Any, parent_data: Any) -> bool:
        record("exec", self.id, self.version)
        _pause(data)
        if data.get_one_of_inputs("ok"):
            return True
        data.outputs.ex_data = "cc_flaky said no"
        return False


class PollService(Service):
    """Polls ``polls`` times (input; 0: forever), recording ``sched <node> <version>:<poll>``."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0.02)

    def execute(self, data: Any, parent_data: Any) -> bool:
        record("exec", self.id, self.version)
        _pause(data)
        data.outputs.count = 0
        return True

    def schedule(self, data: Any, parent_data: Any, callback_data: Any = None) -> bool:
        count = int(data.get_one_of_outputs("count", 0) or 0) + 1
        record("sched", self.id, f"{self.version}:{count}")
        data.outputs.count = count
        polls = int(data.get_one_of_inputs("polls", 3) or 0)
        if polls and count >= polls:
            self.finish_schedule()
        return True


class CallbackService(Service):
    """Waits for one callback; fails when the payload says ``{"ok": False}``."""

    __need_schedule__ = True
    interval = None

    def execute(self, data: Any, parent_data: Any) -> bool:
        record("exec", self.id, self.version)
        _pause(data)
        return True

    def schedule(self, data: Any, parent_data: Any, callback_data: Any = None) -> bool:
        payload = callback_data or {}
        record("sched", self.id, f"{self.version}:{payload.get('n', '-')}")
        return bool(payload.get("ok", True))


class MultiCallbackService(CallbackService):
    """Takes callbacks (counting them in ``received``) until one says ``done``."""

    __multi_callback_enabled__ = True

    def schedule(self, data: Any, parent_data: Any, callback_data: Any = None) -> bool:
        payload = callback_data or {}
        record("sched", self.id, f"{self.version}:{payload.get('n', '-')}")
        data.outputs.received = int(data.get_one_of_outputs("received", 0) or 0) + 1
        if not payload.get("ok", True):
            return False
        if payload.get("done"):
            self.finish_schedule()
        return True


class RecordedEnd(ExecutableEndEvent):
    code = "cc_end"

    def execute(self, in_subprocess: bool, root_pipeline_id: str, current_pipeline_id: str) -> None:
        record("end", current_pipeline_id, root_pipeline_id)
        time.sleep(0.01)


class GatedVariable(LazyVariable):
    """Records ``render <gate>`` and waits (bounded) until the file named by its value exists."""

    code = "cc_gated"

    def get_value(self) -> str:
        record("render", self.value, "-")
        deadline = time.monotonic() + 30
        while not os.path.exists(self.value) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "rendered"


def end_render_tree(gate: str) -> dict[str, Any]:
    """start -> activity -> executable end event, the pipeline's output a lazy variable held at
    ``gate``: the outputs render on the user-code pool after the end event's code returned."""
    start = b.EmptyStartEvent()
    start.extend(act("cc_plain")).extend(b.ExecutableEndEvent(type="cc_end"))
    data = b.Data(inputs={"${slow}": b.Var(type=b.Var.LAZY, custom_type="cc_gated", value=gate)}, outputs=["${slow}"])
    return b.build_tree(start, data=data)


def revoke_tree() -> dict[str, Any]:
    """A parallel gateway into a slow execute, a poll (6 polls after a slow execute), a callback
    wait and a subprocess running a slow execute: a revoke finds them all under way."""
    start, pg, cg = b.EmptyStartEvent(), b.ParallelGateway(), b.ConvergeGateway()
    sub_start = b.EmptyStartEvent()
    sub_start.extend(act("cc_plain", 400)).extend(b.EmptyEndEvent())
    start.extend(pg).connect(act("cc_plain", 400), act("cc_poll", 200, polls=6), act("cc_callback"),
                             b.SubProcess(start=sub_start)).converge(cg).extend(b.EmptyEndEvent())
    return b.build_tree(start)


def revoke_all_under_way(runtime: culm.Runtime, count: int) -> None:
    """Start ``count`` revoke_tree pipelines, print their ids, and revoke each once its executes
    are under way (recording the calls); then wait to be killed."""
    trees = [revoke_tree() for _ in range(count)]
    for t in trees:
        assert api.run_pipeline(runtime, t).result
    print(json.dumps([t["id"] for t in trees]), flush=True)
    for t in trees:
        nodes = set(t["activities"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(os.environ["CRASH_LOG"]) as fh:
                if len(nodes & {w.split()[1] for w in fh if w.startswith("exec ")}) >= 3:
                    break
            time.sleep(0.01)
        record("op", "revoke", t["id"])
        record("ok", "revoke", t["id"], api.revoke_pipeline(runtime, t["id"]).result)
    time.sleep(3600)


def _component(code: str, service: type[Service]) -> None:
    type(f"{service.__name__}Component", (Component,), {"code": code, "name": code, "bound_service": service})


for _code, _service in (("cc_plain", PlainService), ("cc_flaky", FlakyService), ("cc_poll", PollService),
                        ("cc_callback", CallbackService), ("cc_multi", MultiCallbackService)):
    _component(_code, _service)


def act(code: str, ms: int = 0, **kw: Any) -> b.ServiceActivity:
    inputs = {k: kw.pop(k) for k in ("polls", "ok") if k in kw}
    a = b.ServiceActivity(component_code=code, **kw)
    a.component.inputs.ms = b.Var(type=b.Var.PLAIN, value=ms)
    for key, value in inputs.items():
        setattr(a.component.inputs, key, b.Var(type=b.Var.PLAIN, value=value))
    return a


def tree(i: int) -> dict[str, Any]:
    start, pg, cg = b.EmptyStartEvent(), b.ParallelGateway(), b.ConvergeGateway()
    loop = act("cc_plain", 30, loop_config={"enable": True, "loop_times": LOOPS})
    sub_start = b.EmptyStartEvent()
    sub_start.extend(act("cc_plain", 30)).extend(act("cc_flaky", 10)).extend(b.ExecutableEndEvent(type="cc_end"))
    sub = b.SubProcess(start=sub_start)
    branches = [
        act("cc_poll", 20, polls=3),
        act("cc_callback", 20),
        act("cc_multi", 20),
        act("cc_flaky", 50),
        act("cc_poll", 0, polls=0, timeout_config={"enable": True, "action": "forced_fail_and_skip", "seconds": 1}),
        sub,
    ]
    yes, no = ("${no_such_key} == 1", "${no_such_key} == 0") if i % 2 else ("1 == 1", "1 == 0")
    eg = b.ExclusiveGateway(conditions={0: yes, 1: no})
    tail, other = act("cc_plain", 30), act("cc_plain", 0)
    start.extend(loop).extend(pg).connect(*branches).converge(cg).extend(eg).connect(tail, other) \
        .converge(b.ConvergeGateway()).extend(b.ExecutableEndEvent(type="cc_end"))
    return b.build_tree(start, data=b.Data(inputs={"${x}": b.Var(type=b.Var.PLAIN, value=0)}))


# -- the operator's random calls ----------------------------------------------------------------
def choices(runtime: culm.Runtime, snap: Snapshot, revocable: bool) -> list[tuple[float, str, str, Any]]:
    """(weight, op, target, call) for the calls that make sense on what ``snap`` shows (most take
    effect; a few are refused, as an operator's late click is)."""
    root, sts, graph = snap.root_id, snap.states, snap.graph
    name = sts[root].name
    if name in ("FINISHED", "REVOKED"):
        return []
    n = random.randrange(10**6)
    out: list[tuple[float, str, str, Any]] = [
        (1, "context", root, lambda: api.update_context_values(runtime, root, {"${x}": n})),
        (4, "pause", root, lambda: api.pause_pipeline(runtime, root)) if name == "RUNNING" else
        (20, "resume", root, lambda: api.resume_pipeline(runtime, root)),
    ]
    if revocable:
        out.append((0.3, "revoke", root, lambda: api.revoke_pipeline(runtime, root)))
    callbacks = {s.node_id: s.type for s in snap.schedules if s.type != "poll" and not s.finished and not s.expired}
    for node_id, node in graph.nodes.items():
        st = sts.get(node_id)
        state = st.name if st is not None else None
        if node.type == "SubProcess" and state == "RUNNING":
            out.append((2, "pause_sub", node_id, lambda i=node_id: api.pause_pipeline(runtime, i)))
        elif node.type == "SubProcess" and state == "SUSPENDED":
            out.append((10, "resume_sub", node_id, lambda i=node_id: api.resume_pipeline(runtime, i)))
        elif node.type == "ExclusiveGateway" and state == "FAILED":
            flow = random.choice(list(node.flows))
            out.append((6, "skip_gateway", node_id, lambda i=node_id, f=flow: api.skip_exclusive_gateway(runtime, i, f)))
        if node.type != "ServiceActivity":
            continue
        if state is None:
            out.append((0.3, "appoint", node_id, lambda i=node_id: api.pause_node_appoint(runtime, i)))
        elif state == "SUSPENDED":
            out.append((10, "unappoint", node_id, lambda i=node_id: api.resume_node_appoint(runtime, i)))
        elif state == "FAILED":
            out.append((6, "retry_ok", node_id,
                        lambda i=node_id: api.retry_node(runtime, i, data={"ok": True, "polls": 1})))
            out.append((2, "retry", node_id, lambda i=node_id: api.retry_node(runtime, i)))
            out.append((3, "skip", node_id, lambda i=node_id: api.skip_node(runtime, i)))
        elif state == "RUNNING":
            version = st.version
            out.append((0.5, "force_fail", node_id,
                        lambda i=node_id: api.forced_fail_activity(runtime, i, "forced by the crash test")))
            if callbacks.get(node_id) == "callback":
                out.append((6, "callback", node_id, lambda i=node_id, v=version: api.callback(runtime, i, v, {"n": n})))
                out.append((1, "callback_fail", node_id,
                            lambda i=node_id, v=version: api.callback(runtime, i, v, {"ok": False, "n": n})))
            elif callbacks.get(node_id) == "multiple_callback":
                out.append((6, "multi", node_id, lambda i=node_id, v=version: api.callback(runtime, i, v, {"n": n})))
                out.append((2, "multi_done", node_id,
                            lambda i=node_id, v=version: api.callback(runtime, i, v, {"done": True, "n": n})))
            if node.loop_config:
                out.append((1, "loop_times", node_id,
                            lambda i=node_id: api.update_node_loop_times(runtime, i, random.randint(1, LOOPS + 1))))
    return out


def fire(runtime: culm.Runtime, roots: list[str], rng: random.Random) -> bool:
    """One call at a random pipeline (the first two may be revoked); False once all have ended."""
    snaps = read_snapshots(runtime.engine, roots)
    live = [r for r in roots if snaps[r].states[r].name not in ("FINISHED", "REVOKED")]
    if not live:
        return False
    root = rng.choice(live)
    options = choices(runtime, snaps[root], root in roots[:2])
    if not options:
        return True
    _, op, target, call = rng.choices(options, weights=[o[0] for o in options])[0]
    record("op", op, target)
    res = call()
    record("ok", op, target, res.result)
    if not res.result and (not res.message or "Traceback" in res.message or " failed: " in res.message):
        record("unclear", op, target, json.dumps(res.message)[:300].replace(" ", "_"))
    return True


def fire_forever(runtime: culm.Runtime, roots: list[str], seed: int, stop: threading.Event | None = None) -> None:
    """Fire calls until every pipeline has ended (``ended`` is recorded) or ``stop`` is set."""
    rng = random.Random(seed)
    random.seed(seed)
    while True:
        try:
            if not fire(runtime, roots, rng):
                break
        except Exception as exc:
            if not is_outage(exc):
                raise
            # Its own read of the pipelines lost its connection (a MariaDB read whose answer did
            # not come within culm.storage.sql.mysql.READ_REPLY_SECONDS): an operator looks again.
            record("outage", type(exc).__name__, "-")
        if stop is not None and stop.is_set():
            return
        time.sleep(rng.uniform(0, 0.02))
    record("ended", "-", "-")


def main() -> None:
    mode, db = sys.argv[1], sys.argv[2]
    if mode == "revoke":
        revoke_all_under_way(culm.Runtime(db, workers=8), int(sys.argv[3]))
    if mode == "end_render":
        runtime = culm.Runtime(db, workers=2)
        t = end_render_tree(sys.argv[3])
        assert api.run_pipeline(runtime, t).result
        print(json.dumps([t["id"]]), flush=True)
        time.sleep(3600)
    assert mode == "run", mode
    from support import wait_until  # (not at the top: worker processes import this module too)

    workers, seed = int(sys.argv[3]), int(sys.argv[4])
    runtime = culm.Runtime(db, workers=workers)
    wait_until(lambda: runtime.dispatcher is not None, 20, 0.02, what="this process to run the file's work")
    roots = sys.argv[5:]
    if not roots:
        trees = [tree(i) for i in range(PIPELINES)]
        for t in trees:
            res = api.run_pipeline(runtime, t)
            assert res.result, res.message
        roots = [t["id"] for t in trees]
    print(json.dumps(roots), flush=True)
    threading.Thread(target=fire_forever, args=(runtime, roots, seed), daemon=True).start()
    time.sleep(3600)


if __name__ == "__main__":
    main()
