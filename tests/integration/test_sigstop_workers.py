"""A worker frozen with SIGSTOP (not killed) for longer than its lease, then let go with SIGCONT.

A process stopped by a debugger, a ``kill -STOP``, a VM paused or a laptop lid closed keeps its
sockets, its broker messages and its user-code threads: when it wakes up it goes on from where it
stood, with a lease another worker took over long ago. Control calls fired at its pipeline while it
is frozen (callbacks, a burst of callbacks at a multiple-callback node, a retry with new inputs, a
pause and a resume) must be done once by the worker that took over (a worker frozen inside a
transaction has it ended by the server, CULM_IDLE_TRANSACTION_SECONDS); when the frozen worker wakes,
the call it had in flight finishes, but its result and whatever else it held are not applied again.

Checked: the pipeline finishes, the invariant checker finds nothing, the held node ran twice (once
in each worker), every other execute and every callback ran once, and the multiple-callback node got
each callback exactly once.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from backends import own_backend
from components import calls, gate
from engine_fixtures import run, wait_state
from storm_ops import RETRY_OK, activity, version_of
from support import wait_until

from culm import api
from culm.builder import (
    ConvergeGateway,
    EmptyEndEvent,
    EmptyStartEvent,
    ParallelGateway,
    build_tree,
)
from culm.core.invariants import check
from culm.core.snapshots import read_snapshot

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]


@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq"])
def test_control_calls_at_a_worker_frozen_past_its_lease_then_woken(kind: str, tmp_path: Path) -> None:
    gate_file = tmp_path / "held-gate"
    # A frozen in the middle of a batch's transaction holds its row locks (the root's among them:
    # the pause below waits for it) until the server ends its idle session (stop 35, MariaDB).
    backend = own_backend(kind, tmp_path, env={"CULM_IDLE_TRANSACTION_SECONDS": "5"})
    frozen = None
    try:
        (a,) = backend.start_workers(1)
        rt = backend.runtime()
        held = activity("dist_sleep", gate=str(gate_file), hold_after=0)
        cb1, cb2, mc, fa = activity("dist_callback"), activity("dist_callback"), activity("t_multi_callback"), activity("t_fail")
        tail = activity("dist_sleep")
        start, pg, cg = EmptyStartEvent(), ParallelGateway(), ConvergeGateway()
        start.extend(pg).connect(held, cb1, cb2, mc, fa).converge(cg).extend(tail).extend(EmptyEndEvent())
        root = run(rt, build_tree(start))
        for node in (cb1, cb2, mc):
            wait_state(rt, node.id, "RUNNING", timeout=30)
        wait_state(rt, fa.id, "FAILED", timeout=30)
        wait_until(lambda: backend.executions()[held.id] == 1, 30, 0.05, what="the held node's execute in A")

        frozen = backend.workers[a]
        assert frozen is not None
        os.killpg(frozen.pid, signal.SIGSTOP)
        answers = {
            "callback cb1": api.callback(rt, cb1.id, version_of(rt, cb1.id), {"x": 1}),
            **{f"multi {n}": api.callback(rt, mc.id, version_of(rt, mc.id), {"n": n}) for n in (1, 2)},
            "retry fa": api.retry_node(rt, fa.id, data=dict(RETRY_OK)),
            "pause": api.pause_pipeline(rt, root),
            "resume": api.resume_pipeline(rt, root),
        }
        assert all(r.result for r in answers.values()), answers
        backend.start_workers(1)
        # B takes the held node over once A's lease ran out (A is frozen: it cannot renew it).
        wait_until(lambda: backend.executions()[held.id] == 2, 60, 0.05, what="worker B to take the held node over")
        wait_until(lambda: backend.executions("callback")[cb1.id] == 1 and calls("multi_call", mc.id) == 2,
                   60, 0.05, what="the callbacks fired at the frozen worker's pipeline to be done by B")
        os.killpg(frozen.pid, signal.SIGCONT)  # A wakes up with its call in flight and its old lease
        gate_file.touch()  # both executes of the held node return now
        assert api.callback(rt, cb2.id, version_of(rt, cb2.id), {"x": 2}).result
        assert api.callback(rt, mc.id, version_of(rt, mc.id), {"n": 3, "done": True}).result
        wait_state(rt, root, "FINISHED", timeout=60)
        wait_until(lambda: not read_snapshot(rt.engine, root).tasks, 30, 0.05, what="no task left")
        assert check(read_snapshot(rt.engine, root)) == []
        execs = backend.executions()
        assert execs[held.id] == 2 and execs[tail.id] == 1 and execs[cb1.id] == 1 and execs[cb2.id] == 1, execs
        assert backend.executions("callback") == {cb1.id: 1, cb2.id: 1}
        received = api.get_execution_data_outputs(rt, mc.id).data["received"]
        assert received == [1, 2, 3], received
        assert calls("multi_call", mc.id) == 3
        assert api.get_execution_data_outputs(rt, cb1.id).data["received"] == {"x": 1}
    finally:
        if frozen is not None and frozen.poll() is None:
            os.killpg(frozen.pid, signal.SIGCONT)
        backend.teardown()


@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq"])
def test_worker_killed_during_a_multiple_callback_burst(kind: str, tmp_path: Path) -> None:
    """kill -9 of the worker while one callback of a multiple-callback node is in its ``schedule``
    and a burst of others arrives from threads: after another worker takes over, every callback is
    applied exactly once (the one in flight may run again, at most once)."""
    backend = own_backend(kind, tmp_path)
    try:
        (a,) = backend.start_workers(1)
        rt = backend.runtime()
        mc, tail = activity("t_multi_callback"), activity("dist_sleep")
        start = EmptyStartEvent()
        start.extend(mc).extend(tail).extend(EmptyEndEvent())
        root = run(rt, build_tree(start))
        wait_state(rt, mc.id, "RUNNING", timeout=30)
        version = version_of(rt, mc.id)
        held = f"burst-{kind}"
        assert api.callback(rt, mc.id, version, {"n": 0, "gate": held}).result
        wait_until(lambda: calls("multi_call", mc.id) == 1, 30, 0.05, what="the held callback in worker A")
        answers: list[object] = []

        def burst(n: int) -> None:
            answers.append(api.callback(rt, mc.id, version, {"n": n}))

        threads = [threading.Thread(target=burst, args=(n,)) for n in range(1, 8)]
        for t in threads:
            t.start()
        backend.kill_worker(a)
        for t in threads:
            t.join(60)
        assert len(answers) == 7 and all(r.result for r in answers), answers  # type: ignore[attr-defined]
        gate(held).set()
        backend.start_workers(1)

        def received() -> list[int]:
            return list(api.get_execution_data_outputs(rt, mc.id).data.get("received") or [])

        wait_until(lambda: len(received()) >= 8, 60, 0.05, what="every callback of the burst to be applied")
        assert sorted(received()) == list(range(8)), received()
        assert api.callback(rt, mc.id, version, {"n": 99, "done": True}).result
        wait_state(rt, root, "FINISHED", timeout=60)
        assert sorted(received()) == [*range(8), 99], received()
        assert 9 <= calls("multi_call", mc.id) <= 10  # the held one may run again, once
        assert check(read_snapshot(rt.engine, root)) == []
        assert backend.executions()[tail.id] == 1
    finally:
        backend.teardown()
