"""Storm classes the random storms rarely line up: calls fired at the same instant at one pipeline.

* A retry with new inputs, callbacks (single and a burst at a multiple-callback node) and a revoke
  of the parent pipeline, fired together from threads behind one barrier: every call is answered
  (done, or refused with a message), the pipeline ends REVOKED with nothing left to run, and the
  invariant checker finds nothing, whichever call won each race.
* Skip and forced fail of nodes inside a subprocess while the subprocess is paused: the calls act on
  the nodes, the subprocess moves on no further until it is resumed, and then the run finishes.

Each test is bounded (polls, no bare sleep) and runs on every runtime.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
from engine_fixtures import run, wait_state
from storm_ops import RETRY_OK, activity, chain, operate, version_of
from support import wait_until

from culm import api, states
from culm.builder import (
    ConvergeGateway,
    EmptyEndEvent,
    EmptyStartEvent,
    ParallelGateway,
    SubProcess,
    build_tree,
)
from culm.core.invariants import check, check_transitions
from culm.core.snapshots import read_snapshot

pytestmark = pytest.mark.timeout(120)


def _idle(runtime: Any, root: str, timeout: float = 20.0) -> None:
    def idle() -> bool:
        return not read_snapshot(runtime.engine, root).tasks

    wait_until(idle, timeout, 0.02, what=f"{root} to have no task left")


def _checked(runtime: Any, root: str, when: str) -> None:
    snap = read_snapshot(runtime.engine, root)
    found = check(snap) + check_transitions(runtime.engine.store.feed.transitions(root)[0])
    assert not found, f"{when}: " + "; ".join(map(str, found))


def _race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` from one thread each, released together; their answers (or exceptions)."""
    answers: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def one(i: int) -> None:
        barrier.wait(10)
        try:
            answers[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - an API call must not raise: reported below
            answers[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a raced call did not return in 60 s"
    return answers


def _answered(answers: list[Any], names: list[str]) -> None:
    for name, res in zip(names, answers, strict=True):
        assert not isinstance(res, BaseException), f"{name} raised {res!r}"
        assert res.result or (res.message and "Traceback" not in res.message), f"{name}: {res}"


@pytest.mark.parametrize("round_", range(int(os.environ.get("CULM_RACE_ROUNDS", "3"))))
def test_retry_with_new_inputs_and_callbacks_racing_a_revoke(runtime: Any, round_: int) -> None:
    fa, cb, mc = activity("t_fail", x=1), activity("t_callback"), activity("t_multi_callback")
    sfa, scb = activity("t_fail", x=2), activity("t_callback")
    sub = SubProcess(start=chain(sfa, scb))
    start, pg, cg = EmptyStartEvent(), ParallelGateway(), ConvergeGateway()
    start.extend(pg).connect(fa, cb, mc, sub).converge(cg).extend(activity("t_none")).extend(EmptyEndEvent())
    root = run(runtime, build_tree(start))
    for node, state in ((fa, states.FAILED), (sfa, states.FAILED), (cb, states.RUNNING), (mc, states.RUNNING)):
        wait_state(runtime, node.id, state, timeout=20)
    _idle(runtime, root)
    cb_v, mc_v = version_of(runtime, cb.id), version_of(runtime, mc.id)
    named: dict[str, Callable[[], Any]] = {
        "retry fa": lambda: api.retry_node(runtime, fa.id, data=dict(RETRY_OK)),
        "retry sfa": lambda: api.retry_node(runtime, sfa.id, data=dict(RETRY_OK)),
        "callback cb": lambda: api.callback(runtime, cb.id, cb_v, {"ok": True}),
        "revoke": lambda: api.revoke_pipeline(runtime, root),
        "pause sub": lambda: api.pause_pipeline(runtime, sub.id),
        "skip sfa": lambda: api.skip_node(runtime, sfa.id),
        "context": lambda: api.update_context_values(runtime, root, {"${mark}": round_}),
        **{f"multi {n}": (lambda n=n: api.callback(runtime, mc.id, mc_v, {"ok": True, "n": n})) for n in range(3)},
    }
    order = list(named)
    random.Random(round_).shuffle(order)  # which thread starts first varies by round
    answers = _race([named[k] for k in order])
    _answered(answers, order)
    assert dict(zip(order, answers, strict=True))["revoke"].result
    _idle(runtime, root)
    snap = read_snapshot(runtime.engine, root)
    assert snap.states[root].name == states.REVOKED
    _checked(runtime, root, "after the race")
    # Nothing runs in a revoked pipeline: every later call is refused with a message.
    for res in (api.retry_node(runtime, fa.id), api.callback(runtime, cb.id, version_of(runtime, cb.id), {}),
                api.resume_pipeline(runtime, root)):
        assert res.result is False and res.message and "Traceback" not in res.message, res


@pytest.mark.parametrize("round_", range(2))
def test_skip_and_force_fail_inside_a_paused_subprocess(runtime: Any, round_: int) -> None:
    sfa, scb, after = activity("t_fail", x=2), activity("t_callback"), activity("t_none")
    sfb = activity("t_fail", x=3)
    sub = SubProcess(start=chain(sfa, scb, sfb, after))
    root = run(runtime, build_tree(chain(sub, activity("t_none"))))
    wait_state(runtime, sfa.id, states.FAILED, timeout=20)
    assert api.pause_pipeline(runtime, sub.id).result
    wait_state(runtime, sub.id, states.SUSPENDED)
    # Skipping the failed node of a paused subprocess: it is skipped, and the subprocess stays put.
    assert api.skip_node(runtime, sfa.id).result
    _idle(runtime, root)
    _checked(runtime, root, "skip in a paused subprocess")
    snap = read_snapshot(runtime.engine, root)
    assert snap.states[sfa.id].name == states.FINISHED and snap.states[sfa.id].skip
    assert scb.id not in snap.states or snap.states[scb.id].name != states.FINISHED
    assert sfb.id not in snap.states
    # Resumed, it runs on to the callback node; paused again, that node is forced to fail.
    assert api.resume_pipeline(runtime, sub.id).result
    wait_state(runtime, scb.id, states.RUNNING, timeout=20)
    _idle(runtime, root)
    assert api.pause_pipeline(runtime, sub.id).result
    names = ["force_fail scb", "callback scb", "resume sub"] if round_ else ["force_fail scb", "callback scb"]
    calls = [lambda: api.forced_fail_activity(runtime, scb.id, "forced while paused"),
             lambda: api.callback(runtime, scb.id, version_of(runtime, scb.id), {"ok": True}),
             lambda: api.resume_pipeline(runtime, sub.id)][:len(names)]
    _answered(_race(calls), names)
    _idle(runtime, root)
    _checked(runtime, root, "force-fail racing a callback in a paused subprocess")
    # The operator drives the run to its end.
    rng = random.Random(round_)
    for rnd in range(15):
        if not operate(runtime, read_snapshot(runtime.engine, root), rng):
            break
        _idle(runtime, root)
        _checked(runtime, root, f"operator round {rnd}")
    assert read_snapshot(runtime.engine, root).states[root].name == states.FINISHED
