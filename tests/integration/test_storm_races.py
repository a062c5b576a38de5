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
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ParallelGateway,
    SubProcess,
    Var,
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


def _drive(runtime: Any, root: str, seed: int, rounds: int = 15) -> str:
    """Act as an operator on ``root`` (checking it after each round) until it ends; its state."""
    rng = random.Random(seed)
    for rnd in range(rounds):
        if not operate(runtime, read_snapshot(runtime.engine, root), rng):
            break
        _idle(runtime, root)
        _checked(runtime, root, f"operator round {rnd}")
    return read_snapshot(runtime.engine, root).states[root].name


def _refused(res: Any, what: str) -> None:
    assert not isinstance(res, BaseException), f"{what} raised {res!r}"
    assert res.result is False and res.message and "Traceback" not in res.message, f"{what}: {res}"


@pytest.mark.parametrize("round_", range(2))
def test_retry_with_new_inputs_racing_callbacks(runtime: Any, round_: int) -> None:
    """A callback node failed by its callback is retried with new inputs while callbacks carrying
    the failed run's version arrive, and while a sibling is called back and retried: every stale
    callback is refused (whichever won), the retried node runs with the new inputs and waits for
    a callback of its new version, and the operator ends the run."""
    cb, fa, sib = activity("t_callback"), activity("t_fail", x=1), activity("t_callback")
    start, pg, cg = EmptyStartEvent(), ParallelGateway(), ConvergeGateway()
    start.extend(pg).connect(cb, fa, sib).converge(cg).extend(activity("t_none")).extend(EmptyEndEvent())
    root = run(runtime, build_tree(start))
    wait_state(runtime, cb.id, states.RUNNING, timeout=20)
    wait_state(runtime, fa.id, states.FAILED, timeout=20)
    _idle(runtime, root)
    assert api.callback(runtime, cb.id, version_of(runtime, cb.id), {"ok": False}).result
    wait_state(runtime, cb.id, states.FAILED, timeout=20)
    _idle(runtime, root)
    stale, sib_v = version_of(runtime, cb.id), version_of(runtime, sib.id)
    named: dict[str, Callable[[], Any]] = {
        "retry cb": lambda: api.retry_node(runtime, cb.id, data={"ok": True, "mark": round_}),
        "retry fa": lambda: api.retry_node(runtime, fa.id, data=dict(RETRY_OK)),
        "callback sib": lambda: api.callback(runtime, sib.id, sib_v, {"ok": True}),
        **{f"stale {n}": (lambda: api.callback(runtime, cb.id, stale, {"ok": True})) for n in range(3)},
    }
    order = list(named)
    random.Random(round_).shuffle(order)
    answers = dict(zip(order, _race([named[k] for k in order]), strict=True))
    _answered(list(answers.values()), list(answers))
    for n in range(3):
        _refused(answers[f"stale {n}"], f"stale callback {n}")
    assert answers["retry cb"].result and answers["retry fa"].result and answers["callback sib"].result, answers
    wait_state(runtime, cb.id, states.RUNNING, timeout=20)
    _idle(runtime, root)
    _checked(runtime, root, "after the race")
    assert version_of(runtime, cb.id) != stale
    assert api.get_execution_data_inputs(runtime, cb.id).data.get("mark") == round_
    _refused(api.callback(runtime, cb.id, stale, {"ok": True}), "a late stale callback")
    assert _drive(runtime, root, round_) == states.FINISHED


@pytest.mark.parametrize("round_", range(2))
def test_skip_racing_force_fail(runtime: Any, round_: int) -> None:
    """Skips and forced fails fired together at a waiting node and at a failed one: a forced fail
    takes the waiting node (a skip finds it RUNNING or FAILED by then), the failed node is skipped
    (a forced fail finds it not RUNNING), every refusal is clear, and the run stays visible to an
    operator (a FAILED node, or the run going on) until it is driven to its end."""
    cb, fa = activity("t_callback"), activity("t_fail", x=1)
    start, pg, cg = EmptyStartEvent(), ParallelGateway(), ConvergeGateway()
    start.extend(pg).connect(cb, fa).converge(cg).extend(activity("t_none")).extend(EmptyEndEvent())
    root = run(runtime, build_tree(start))
    wait_state(runtime, cb.id, states.RUNNING, timeout=20)
    wait_state(runtime, fa.id, states.FAILED, timeout=20)
    _idle(runtime, root)
    named: dict[str, Callable[[], Any]] = {}
    for node, name in ((cb, "cb"), (fa, "fa")):
        for n in range(2):
            named[f"skip {name} {n}"] = lambda node=node: api.skip_node(runtime, node.id)
            named[f"force_fail {name} {n}"] = lambda node=node: api.forced_fail_activity(runtime, node.id, "raced")
    order = list(named)
    random.Random(round_).shuffle(order)
    answers = dict(zip(order, _race([named[k] for k in order]), strict=True))
    _answered(list(answers.values()), list(answers))
    assert sum(answers[f"force_fail cb {n}"].result for n in range(2)) == 1, answers
    assert sum(answers[f"skip fa {n}"].result for n in range(2)) == 1, answers
    assert not any(answers[f"force_fail fa {n}"].result for n in range(2)), answers
    assert sum(answers[f"skip cb {n}"].result for n in range(2)) <= 1, answers
    _idle(runtime, root)
    _checked(runtime, root, "after the race")
    snap = read_snapshot(runtime.engine, root)
    assert snap.states[fa.id].name == states.FINISHED and snap.states[fa.id].skip
    skipped = any(answers[f"skip cb {n}"].result for n in range(2))
    assert snap.states[cb.id].name == (states.FINISHED if skipped else states.FAILED)
    assert _drive(runtime, root, round_) == states.FINISHED


@pytest.mark.parametrize("round_", range(3))
def test_pause_and_resume_of_a_subprocess_while_its_parent_is_revoked(runtime: Any, round_: int) -> None:
    """Pauses and resumes of a subprocess (paused or not beforehand) fired with a revoke of its
    parent and a callback inside it: the revoke is done, every other call answered, the run ends
    REVOKED with no live process and nothing left to run, and later calls are refused clearly."""
    scb, sfa = activity("t_callback"), activity("t_fail", x=2)
    sub = SubProcess(start=chain(scb, sfa))
    cb = activity("t_callback")
    start, pg, cg = EmptyStartEvent(), ParallelGateway(), ConvergeGateway()
    start.extend(pg).connect(sub, cb).converge(cg).extend(EmptyEndEvent())
    root = run(runtime, build_tree(start))
    wait_state(runtime, scb.id, states.RUNNING, timeout=20)
    _idle(runtime, root)
    if round_ == 1:
        assert api.pause_pipeline(runtime, sub.id).result
        wait_state(runtime, sub.id, states.SUSPENDED)
    scb_v = version_of(runtime, scb.id)
    named: dict[str, Callable[[], Any]] = {
        "revoke": lambda: api.revoke_pipeline(runtime, root),
        "callback scb": lambda: api.callback(runtime, scb.id, scb_v, {"ok": True}),
        **{f"pause sub {n}": (lambda: api.pause_pipeline(runtime, sub.id)) for n in range(2)},
        **{f"resume sub {n}": (lambda: api.resume_pipeline(runtime, sub.id)) for n in range(2)},
    }
    order = list(named)
    random.Random(round_).shuffle(order)
    answers = dict(zip(order, _race([named[k] for k in order]), strict=True))
    _answered(list(answers.values()), list(answers))
    assert answers["revoke"].result, answers["revoke"]
    _idle(runtime, root)
    snap = read_snapshot(runtime.engine, root)
    assert snap.states[root].name == states.REVOKED
    _checked(runtime, root, "after the race")
    assert not [p for p in snap.processes if not p.dead], snap.processes
    for name, res in (("pause sub", api.pause_pipeline(runtime, sub.id)),
                      ("resume sub", api.resume_pipeline(runtime, sub.id)),
                      ("callback cb", api.callback(runtime, cb.id, version_of(runtime, cb.id), {"ok": True}))):
        _refused(res, f"{name} after the revoke")


@pytest.mark.parametrize("round_", range(2))
def test_callbacks_to_a_node_just_retried(runtime: Any, round_: int) -> None:
    """Right after a callback node is retried, callbacks race its new run (its state READY, its
    execute under way, or its schedule saved): each reads the node's version and calls back at
    once until one is taken. One callback is taken and run, every other one refused clearly, the
    node finishes once, and the pipeline finishes."""
    cb = activity("t_callback")
    root = run(runtime, build_tree(chain(cb, activity("t_none"))))
    wait_state(runtime, cb.id, states.RUNNING, timeout=20)
    _idle(runtime, root)
    failed = version_of(runtime, cb.id)
    assert api.callback(runtime, cb.id, failed, {"ok": False}).result
    wait_state(runtime, cb.id, states.FAILED, timeout=20)
    assert api.retry_node(runtime, cb.id).result
    taken: list[str] = []
    refusals: list[Any] = []

    def caller(n: int) -> Callable[[], Any]:
        def call() -> int:
            tries = 0
            while not taken and tries < 2000:
                tries += 1
                version = version_of(runtime, cb.id)
                res = api.callback(runtime, cb.id, version, {"ok": True, "n": n})
                if res.result:
                    taken.append(version)
                else:
                    refusals.append(res)
            return tries
        return call

    tries = _race([caller(n) for n in range(3 + round_)])
    assert len(taken) == 1 and taken[0] != failed, (taken, tries)
    for res in refusals:
        _refused(res, "a callback racing the retried run")
    wait_state(runtime, root, states.FINISHED, timeout=20)
    _idle(runtime, root)
    _checked(runtime, root, "after the race")
    snap = read_snapshot(runtime.engine, root)
    assert snap.states[cb.id].name == states.FINISHED and snap.states[cb.id].version == taken[0]
    assert not snap.states[cb.id].skip
    assert api.get_execution_data_outputs(runtime, cb.id).data["callback_data"]["ok"] is True
    # Its failed run and its finished one in the history: the node ran twice, no more.
    assert len(api.get_node_histories(runtime, cb.id).data) == 1


@pytest.mark.parametrize("round_", range(3))
def test_update_context_values_racing_a_gateway(runtime: Any, round_: int) -> None:
    """``update_context_values`` fired at the instant an exclusive gateway routed by ${route}
    evaluates: once while the failed node before it is retried (the gateway then sees ${route}
    before or after the change), once while the failed gateway itself is retried. Every call is
    answered; the gateway either fails again (visible, the operator acts) or takes the flow of a
    value that was set; the run never stalls and is driven to its end."""
    fa = activity("t_fail", x=1)
    eg, cg = ExclusiveGateway(conditions={0: "${route} == 1", 1: "${route} == 2"}), ConvergeGateway()
    one, two = activity("t_none"), activity("t_none")
    start = EmptyStartEvent()
    start.extend(fa).extend(eg).connect(one, two).converge(cg).extend(EmptyEndEvent())
    tree = build_tree(start, data=Data(inputs={"${route}": Var(type=Var.PLAIN, value=0)}))
    root = run(runtime, tree)
    wait_state(runtime, fa.id, states.FAILED, timeout=20)
    _idle(runtime, root)
    value = 1 + round_ % 2
    answers = _race([lambda: api.retry_node(runtime, fa.id, data=dict(RETRY_OK)),
                     lambda: api.update_context_values(runtime, root, {"${route}": value})])
    _answered(answers, ["retry fa", "context"])
    assert all(a.result for a in answers), answers
    wait_state(runtime, eg.id, (states.FAILED, states.FINISHED), timeout=20)
    _idle(runtime, root)
    _checked(runtime, root, "after the first race")
    snap = read_snapshot(runtime.engine, root)
    if snap.states[eg.id].name == states.FINISHED:  # it saw the new value: its flow, no other
        taken, other = (one, two) if value == 1 else (two, one)
        assert taken.id in snap.states and other.id not in snap.states
    else:  # it saw ${route} 0; now retried with the value changed again, racing
        again = 3 - value
        answers = _race([lambda: api.retry_node(runtime, eg.id),
                         lambda: api.update_context_values(runtime, root, {"${route}": again})])
        _answered(answers, ["retry eg", "context"])
        wait_state(runtime, eg.id, (states.FAILED, states.FINISHED), timeout=20)
        _idle(runtime, root)
        _checked(runtime, root, "after the second race")
        snap = read_snapshot(runtime.engine, root)
        if snap.states[eg.id].name == states.FINISHED:  # one flow, of a value that was set
            assert (one.id in snap.states) != (two.id in snap.states), snap.states
    assert _drive(runtime, root, round_) == states.FINISHED
