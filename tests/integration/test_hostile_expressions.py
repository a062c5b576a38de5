"""Hostile expressions in a running engine: each fails its own node with a clear ``ex_data`` while
a healthy pipeline next to it finishes, on every runtime (embedded and distributed).

The full payload corpus, with its time and memory checks per payload, is
``tests/unit/test_resource_corpus.py``; here one payload of each class goes through the engine.
"""

from __future__ import annotations

import datetime
import resource

import pytest
from engine_fixtures import inputs, node_state, outputs, run, wait_pipeline, wait_state

from culm import api
from culm.builder import (
    ConditionalParallelGateway,
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ParallelGateway,
    Params,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)

pytestmark = pytest.mark.timeout(120)

MEMORY_BOUND = 64_000_000  # docs/data-and-variables.md

# (payload, a phrase its ex_data must hold)
HOSTILE = [
    pytest.param("${len(set([i * (2**61 - 1) for i in range(20000)]))}", ("share one hash", "longer than"),
                 id="hash-collisions"),
    pytest.param("${list(range(10**3999, 10**3999 + 10**6))}", ("too large", "memory"), id="materialised"),
    pytest.param("${int('f' * 10**6, 16) // 3}", ("digits",), id="power-of-two-int"),
    pytest.param("${pow(3, -(10**3999), 10**3999 + 1)}", ("4096 bits",), id="negative-pow-modulus"),
    pytest.param("${('a,' * 500000).split(',')}", ("memory", "longer than"), id="split"),  # under load, the wall-clock limit may come first
    pytest.param("${[[x] for x in range(10**6)]}", ("memory", "longer than"), id="memory"),
    pytest.param("${[all(zip(" + ", ".join(["r"] * 600) + ")) for r in [range(10**6)]]}", ("longer than",),
                 id="lazy-consumer"),
]


def echo(value: str) -> ServiceActivity:
    act = ServiceActivity(component_code="t_echo")
    act.component.inputs.x = Var(type=Var.SPLICE, value=value)
    return act


def healthy_tree() -> tuple[dict, list[ServiceActivity]]:
    acts = [echo("${n + 1}-${s.upper()}") for _ in range(3)]
    start = EmptyStartEvent()
    tail = start
    for act in acts:
        tail = tail.extend(act)
    tail.extend(EmptyEndEvent())
    data = Data(inputs={"${n}": Var(type=Var.PLAIN, value=41), "${s}": Var(type=Var.PLAIN, value="ok")})
    return build_tree(start, data=data), acts


def hostile_tree(payloads: list[str]) -> tuple[dict, list[ServiceActivity]]:
    acts = [echo(p) for p in payloads]
    start, pg, cg = EmptyStartEvent(), ParallelGateway(), ConvergeGateway()
    start.extend(pg).connect(*acts).to(pg).converge(cg).extend(EmptyEndEvent())
    return build_tree(start), acts


def test_hostile_inputs_fail_their_nodes_while_a_healthy_pipeline_finishes(runtime):
    payloads = [p.values[0] for p in HOSTILE]
    hostile, acts = hostile_tree(payloads)
    healthy, healthy_acts = healthy_tree()
    run(runtime, hostile)
    run(runtime, healthy)
    wait_pipeline(runtime, healthy["id"], "FINISHED", timeout=30)
    assert outputs(runtime, healthy_acts[-1].id)["out"] == "42-OK!"
    for act, param in zip(acts, HOSTILE, strict=True):
        wait_state(runtime, act.id, "FAILED", timeout=30)
        ex = outputs(runtime, act.id)["ex_data"]
        assert ex.startswith("inputs hydrate failed"), ex
        assert any(phrase in ex for phrase in param.values[1]), (param.id, ex)


def test_hostile_gateway_condition_fails_its_gateway(runtime):
    a, b = echo("a"), echo("b")
    start, gw, cg = EmptyStartEvent(), ConditionalParallelGateway(), ConvergeGateway()
    start.extend(gw).connect(a, b).to(gw).converge(cg).extend(EmptyEndEvent())
    gw.add_condition(0, "${len(set([i * (2**61 - 1) for i in range(20000)]))} > 0")
    gw.add_condition(1, "1 == 1")
    assert "condition" in fails_beside_a_healthy_pipeline(runtime, build_tree(start), gw.id)


def fails_beside_a_healthy_pipeline(runtime, tree: dict, node_id: str) -> str:
    """Run ``tree`` and a healthy pipeline; the healthy one finishes, node ``node_id`` of ``tree``
    fails. Returns its ``ex_data``."""
    healthy, _ = healthy_tree()
    run(runtime, tree)
    run(runtime, healthy)
    wait_pipeline(runtime, healthy["id"], "FINISHED", timeout=30)
    wait_state(runtime, node_id, "FAILED", timeout=30)
    return outputs(runtime, node_id)["ex_data"]


def test_hostile_subprocess_param_fails_the_subprocess(runtime):
    inner = echo("${p}")
    sub_start = EmptyStartEvent()
    sub_start.extend(inner).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start, data=Data(inputs={"${p}": Var(type=Var.PLAIN, value="default")}),
                     params=Params({"${p}": Var(type=Var.SPLICE, value="${int('f' * 10**6, 16) // 3}")}))
    start = EmptyStartEvent()
    start.extend(sub).extend(EmptyEndEvent())
    tree = build_tree(start)
    run(runtime, tree)
    wait_state(runtime, sub.id, "FAILED", timeout=30)
    ex = outputs(runtime, sub.id)["ex_data"]
    assert ex.startswith("subprocess params hydrate failed: param '${p}': ") and "digits" in ex, ex
    assert node_state(runtime, inner.id) is None


SLOW = 6  # seconds each slow lazy variable blocks; a healthy pipeline takes a fraction of it


def test_slow_lazy_variables_do_not_hold_the_engine(runtime):
    """get_value is user code: an activity input and a subprocess param that block for seconds
    hold a pool thread each, never the engine, so a pipeline started after them finishes first."""
    slow_act = ServiceActivity(component_code="t_echo")
    slow_act.component.inputs.x = Var(type=Var.LAZY, custom_type="t_lazy_slow", value=str(SLOW))
    inner = echo("${p}")
    sub_start = EmptyStartEvent()
    sub_start.extend(inner).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start, data=Data(inputs={"${p}": Var(type=Var.PLAIN, value="default")}),
                     params=Params({"${p}": Var(type=Var.LAZY, custom_type="t_lazy_slow", value=str(SLOW))}))
    start, pg, cg = EmptyStartEvent(), ParallelGateway(), ConvergeGateway()
    start.extend(pg).connect(slow_act, sub).to(pg).converge(cg).extend(EmptyEndEvent())
    slow = build_tree(start)
    healthy, _ = healthy_tree()
    run(runtime, slow)
    wait_state(runtime, slow_act.id, "RUNNING")
    run(runtime, healthy)
    wait_pipeline(runtime, healthy["id"], "FINISHED", timeout=SLOW * 2)
    assert node_state(runtime, slow["id"])["state"] == "RUNNING"  # both still inside get_value
    wait_pipeline(runtime, slow["id"], "FINISHED", timeout=SLOW * 4)
    assert inputs(runtime, slow_act.id)["x"] == "slow"
    assert outputs(runtime, inner.id)["out"] == "slow!"


def test_a_slow_lazy_variable_in_a_condition_does_not_hold_the_engine(runtime):
    taken, other = echo("taken"), echo("other")
    start, gw = EmptyStartEvent(), ExclusiveGateway(conditions={0: "'${v}' == 'slow'", 1: "'${v}' != 'slow'"})
    start.extend(gw).connect(taken, other).to(gw).converge(ConvergeGateway()).extend(EmptyEndEvent())
    slow = build_tree(start, data=Data(inputs={"${v}": Var(type=Var.LAZY, custom_type="t_lazy_slow", value=str(SLOW))}))
    healthy, _ = healthy_tree()
    run(runtime, slow)
    wait_state(runtime, gw.id, "RUNNING")
    run(runtime, healthy)
    wait_pipeline(runtime, healthy["id"], "FINISHED", timeout=SLOW * 2)
    assert node_state(runtime, gw.id)["state"] == "RUNNING"
    wait_pipeline(runtime, slow["id"], "FINISHED", timeout=SLOW * 4)
    assert outputs(runtime, taken.id)["out"] == "taken!" and node_state(runtime, other.id) is None


def test_slow_lazy_keys_of_start_and_end_events_do_not_hold_the_engine(runtime):
    act = echo("${v}")
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    lazy = {"${v}": Var(type=Var.LAZY, custom_type="t_lazy_slow", value=str(SLOW / 2)),
            "${w}": Var(type=Var.LAZY, custom_type="t_lazy_slow", value=str(SLOW / 2))}
    slow = build_tree(start, data=Data(inputs=lazy, pre_render_keys=["${v}"], outputs=["${w}"]))
    healthy, _ = healthy_tree()
    run(runtime, slow)
    wait_state(runtime, start.id, "RUNNING")
    run(runtime, healthy)
    wait_pipeline(runtime, healthy["id"], "FINISHED", timeout=SLOW)
    assert node_state(runtime, act.id) is None  # the start event is still resolving ${v}
    wait_pipeline(runtime, slow["id"], "FINISHED", timeout=SLOW * 4)
    assert outputs(runtime, act.id)["out"] == "slow!"
    assert outputs(runtime, slow["id"])["${w}"] == "slow"


@pytest.mark.parametrize(("payload", "phrases"), HOSTILE)
def test_a_hostile_input_grows_the_embedded_process_less_than_the_bound(tmp_path, payload, phrases):
    import culm

    with culm.Runtime(f"sqlite:///{tmp_path}/t.db") as rt:
        warm, _ = healthy_tree()
        run(rt, warm)
        wait_pipeline(rt, warm["id"], "FINISHED")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        tree, (act,) = hostile_tree([payload])
        run(rt, tree)
        wait_state(rt, act.id, "FAILED", timeout=30)
        assert any(phrase in outputs(rt, act.id)["ex_data"] for phrase in phrases)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown < MEMORY_BOUND, f"peak RSS grew by {grown / 1e6:.0f} MB"


def test_inputs_that_render_too_large_to_store_fail_their_node(runtime):
    """Three short templates render 999,000 CJK characters each (inside every render bound); JSON
    writes each as a 6-character escape, 21 MB in all with a MySQL statement's escapes: MariaDB dropped the connection at every
    attempt (over its 16 MiB packet) and the node stayed RUNNING for ever. Now the inputs over
    culm.model.limits.MAX_PAYLOAD_BYTES are left out and the node fails, on every backend."""
    act = ServiceActivity(component_code="t_echo")
    for key in ("x0", "x1", "x2"):
        act.component.inputs[key] = Var(type=Var.SPLICE, value="${'\u4e2d' * 999000}")
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    tree = build_tree(start)
    ex = fails_beside_a_healthy_pipeline(runtime, tree, act.id)
    assert "could not be stored: inputs the store cannot hold: 'x0': it takes 6,993,0" in ex, ex  # its key counted too
    assert "'x1'" in ex and "'x2'" not in ex, ex
    assert inputs(runtime, act.id)["x2"] == "\u4e2d" * 999000
    assert api.skip_node(runtime, act.id).result
    wait_pipeline(runtime, tree["id"], "FINISHED", timeout=30)


def test_list_variables_sharing_each_other_cannot_multiply_past_the_render_budget(runtime):
    """Variable i is a list holding variable i-1 twice (``[${a0}, ${a0}]``): no text is rendered,
    only objects shared, yet 40 of them hold 2**40 items written out. Storing the inputs walked
    them all inside the engine's transaction: the engine froze for every pipeline. Now a shared
    object counts against the render budget as its text would."""
    variables = {"${a0}": Var(type=Var.PLAIN, value="x" * 10)}
    for i in range(1, 40):
        variables[f"${{a{i}}}"] = Var(type=Var.SPLICE, value=[f"${{a{i - 1}}}", f"${{a{i - 1}}}"])
    act = echo("${a39}")
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    ex = fails_beside_a_healthy_pipeline(runtime, build_tree(start, data=Data(inputs=variables)), act.id)
    assert ex.startswith("inputs hydrate failed: variable ${a1") and "rendered text is longer than" in ex, ex



def test_a_strftime_pattern_too_long_fails_its_node_before_it_formats(runtime):
    """A datetime in the context formatted with a pattern of half a million %c (24 characters
    each): refused from the pattern's length before strftime runs, the input named; the pipeline
    stays operable: a retry with a usual pattern finishes it."""
    act = echo("${('%c:' % 123 + '%c' * 490000 + '%c' % 125).format(when)}")
    after = echo("${when.year}")
    start = EmptyStartEvent()
    start.extend(act).extend(after).extend(EmptyEndEvent())
    when = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    tree = build_tree(start, data=Data(inputs={"${when}": Var(type=Var.PLAIN, value=when)}))
    ex = fails_beside_a_healthy_pipeline(runtime, tree, act.id)
    assert ex.startswith("inputs hydrate failed") and "formatted string would be" in ex, ex
    assert "input 'x'" in ex, ex
    assert api.retry_node(runtime, act.id, {"x": "${('%c:%%Y' % 123 + '%c' % 125).format(when)}"}).result
    wait_pipeline(runtime, tree["id"], "FINISHED", timeout=30)
    assert (outputs(runtime, act.id)["out"], outputs(runtime, after.id)["out"]) == ("2024!", "2024!")
