"""What one node leaves behind is bounded: a component call's log lines and failure text, a node
loop's collected outputs, a gateway's failure text, on every runtime (embedded, and real
``culm worker`` processes on PostgreSQL + Redis and MariaDB + RabbitMQ).

Found probing (session 13): a component that logged 2,000,000 lines in one ``execute`` held
1.1 GB in the worker until it returned and the engine's write transaction for 19 s storing them;
one that raised an exception with a 50 MB message failed its node with an *engine error* (the
failure text went over the stored payload limit at each of three attempts to store it), its own
message lost; so did a node loop whose collected outputs grew past that limit. An exclusive
gateway whose 1,000 long conditions all held wrote them all into its failure text (8.8 MB): the
engine failed its *start event* instead, with an engine error; and a pipeline whose outputs fit
one by one but not together failed its end event with an engine error naming neither, and so did
a subprocess's params. The limits are documented in docs/data-and-variables.md.
"""

from __future__ import annotations

import pytest
from engine_fixtures import finish, node_state, outputs, run, wait_pipeline, wait_state
from support import wait_until

from culm import api
from culm.builder import (
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    NodeOutput,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)
from culm.model import limits

pytestmark = pytest.mark.timeout(120)


def single(code: str, **inputs: object) -> tuple[dict, ServiceActivity]:
    start, act = EmptyStartEvent(), ServiceActivity(component_code=code)
    for key, value in inputs.items():
        setattr(act.component.inputs, key, Var(type=Var.PLAIN, value=value))
    start.extend(act).extend(EmptyEndEvent())
    return build_tree(start), act


def healthy_beside(runtime, tree: dict) -> None:
    """Run ``tree`` and a healthy pipeline after it: the healthy one finishes with its output."""
    ok, ok_act = single("t_echo", x="fine")
    run(runtime, tree)
    finish(runtime, ok, timeout=60)
    assert outputs(runtime, ok_act.id)["out"] == "fine!"


def test_a_call_keeps_a_bounded_number_of_log_lines_and_says_how_many_went(runtime):
    count = limits.MAX_CALL_LOG_LINES + 4_321
    tree, act = single("t_log_flood", lines=count)
    healthy_beside(runtime, tree)
    wait_pipeline(runtime, tree["id"], "FINISHED", timeout=60)
    assert outputs(runtime, act.id)["logged"] is True
    lines = api.get_node_logs(runtime, act.id).data.split("\n")
    assert len(lines) == limits.MAX_CALL_LOG_LINES + 1
    assert lines[0] == "[INFO] item 0 " and lines[-2] == f"[INFO] item {limits.MAX_CALL_LOG_LINES - 1} "
    assert lines[-1].startswith("[WARNING] 4,321 more log lines (") and "MAX_CALL_LOG_LINES" in lines[-1], lines[-1]


def test_a_call_keeps_a_bounded_number_of_log_characters(runtime):
    width = 60_000  # each line under a TEXT column, 100 of them over the call's characters
    tree, act = single("t_log_flood", lines=100, width=width)
    finish(runtime, tree, timeout=60)
    lines = api.get_node_logs(runtime, act.id).data.split("\n")
    kept = limits.MAX_CALL_LOG_CHARS // len(f"[INFO] item 10 {'w' * width}")
    assert len(lines) == kept + 1, len(lines)
    assert sum(map(len, lines[:-1])) <= limits.MAX_CALL_LOG_CHARS
    assert lines[-1].startswith(f"[WARNING] {100 - kept} more log lines ("), lines[-1][:80]


@pytest.mark.parametrize("how", ["raise", "ex_data"])
def test_a_huge_failure_text_is_kept_cut_and_the_node_fails_as_itself(runtime, how):
    """20 MB of failure text (over the 7 MB a payload may take): the node fails with its own text,
    cut in the middle, and its other outputs kept; never an engine error."""
    tree, act = single("t_huge_failure", size=20_000_000, how=how)
    healthy_beside(runtime, tree)
    wait_state(runtime, act.id, "FAILED", timeout=60)
    out = outputs(runtime, act.id)
    ex = out["ex_data"]
    assert len(ex) <= limits.MAX_EX_DATA_CHARS
    assert "engine error" not in ex and "could not be stored" not in ex, ex[:300]
    start = "Traceback (most recent call last)" if how == "raise" else "head yyy"
    assert ex.startswith(start), ex[:80]
    assert ex.endswith("x tail\n" if how == "raise" else "y tail"), ex[-80:]
    assert "characters cut: ex_data keeps the first and the last" in ex
    assert out["partial"] == "kept" and out["_result"] is False
    # the node is as retryable as any failed one
    assert api.retry_node(runtime, act.id).result
    wait_until(lambda: (node_state(runtime, act.id) or {}).get("retry") == 1
               and node_state(runtime, act.id)["state"] == "FAILED", 60, what="the retried node to fail again")
    assert len(outputs(runtime, act.id)["ex_data"]) <= limits.MAX_EX_DATA_CHARS


def test_a_loop_whose_collected_outputs_outgrow_the_store_fails_saying_so(runtime):
    """Each iteration's outputs fit (2.5 MB); the list a node loop collects them in does not at the
    third: the node fails naming the variable and the iteration, the list keeps the first two."""
    start = EmptyStartEvent()
    body = ServiceActivity(component_code="t_loop_output",
                           loop_config={"enable": True, "loop_times": 5, "outputs_key": "${passes}"})
    body.component.inputs.size = Var(type=Var.PLAIN, value=2_500_000)
    start.extend(body).extend(EmptyEndEvent())
    tree = build_tree(start, data=Data(outputs=["${passes}"]))
    healthy_beside(runtime, tree)
    wait_state(runtime, body.id, "FAILED", timeout=60)
    out = outputs(runtime, body.id)
    ex = out["ex_data"]
    assert ex.startswith(f"node {body.id}: the outputs of its loop iterations could not be kept in context "
                         "variable '${passes}' at iteration 3 ("), ex[:200]
    assert "bytes once encoded, over the 7,000,000 stored" in ex and "engine error" not in ex, ex
    assert out["outputs"] == {"k": "o" * 2_500_000} and out["_result"] is False
    assert api.skip_node(runtime, body.id).result
    wait_pipeline(runtime, tree["id"], "FINISHED", timeout=60)
    passes = outputs(runtime, tree["id"])["${passes}"]
    assert [(p["inner_loop"], len(p["k"])) for p in passes] == [(1, 2_500_000), (2, 2_500_000)]


def test_a_gateway_failure_quoting_many_long_conditions_is_kept_cut(runtime):
    same = "'" + "a" * 4400 + "'"
    conditions = {i: f"{same} == {same} and {i} == {i}" for i in range(1000)}
    start, eg, cg = EmptyStartEvent(), ExclusiveGateway(conditions=conditions), ConvergeGateway()
    branches = [ServiceActivity(component_code="t_none") for _ in conditions]
    start.extend(eg).connect(*branches).to(eg).converge(cg).extend(EmptyEndEvent())
    tree = build_tree(start)
    healthy_beside(runtime, tree)
    wait_state(runtime, eg.id, "FAILED", timeout=60)
    assert node_state(runtime, start.id)["state"] == "FINISHED"
    ex = outputs(runtime, eg.id)["ex_data"]
    assert ex.startswith(f"multiple conditions meet: [\"{same} == {same} and 0 == 0\""), ex[:100]
    assert ex.endswith("and 999 == 999\"]") and len(ex) <= limits.MAX_EX_DATA_CHARS, ex[-100:]
    assert api.skip_exclusive_gateway(runtime, eg.id, tree["gateways"][eg.id]["outgoing"][0]).result
    wait_pipeline(runtime, tree["id"], "FINISHED", timeout=60)


@pytest.mark.parametrize("nested", [False, True], ids=["root", "subprocess"])
def test_pipeline_outputs_too_large_together_fail_the_end_event_naming_them(runtime, nested):
    first, second = ServiceActivity(component_code="t_loop_output"), ServiceActivity(component_code="t_loop_output")
    for act in (first, second):
        act.component.inputs.size = Var(type=Var.PLAIN, value=4_000_000)
    start, end = EmptyStartEvent(), EmptyEndEvent()
    start.extend(first).extend(second).extend(end)
    data = Data(inputs={"${a}": NodeOutput(source_act=first.id, source_key="outputs"),
                        "${b}": NodeOutput(source_act=second.id, source_key="outputs")}, outputs=["${a}", "${b}"])
    if nested:
        sub, outer = SubProcess(start=start, data=data), EmptyStartEvent()
        outer.extend(sub).extend(EmptyEndEvent())
        tree, pipeline_id = build_tree(outer), sub.id
    else:
        tree = build_tree(start, data=data)
        pipeline_id = tree["id"]
    healthy_beside(runtime, tree)
    wait_state(runtime, end.id, "FAILED", timeout=60)
    ex = outputs(runtime, end.id)["ex_data"]
    assert ex.startswith(f"pipeline {pipeline_id}: its outputs ['${{a}}', '${{b}}'] could not be stored together: "
                         "it takes 8,000,"), ex
    assert ex.endswith("bytes once encoded, over the 7,000,000 stored"), ex
    assert node_state(runtime, pipeline_id)["state"] == "RUNNING"
    assert outputs(runtime, second.id)["outputs"] == {"k": "o" * 4_000_000}


def test_subprocess_params_too_large_together_fail_the_subprocess_naming_one(runtime):
    first, second = ServiceActivity(component_code="t_loop_output"), ServiceActivity(component_code="t_loop_output")
    for act in (first, second):
        act.component.inputs.size = Var(type=Var.PLAIN, value=4_000_000)
    inner = EmptyStartEvent()
    inner.extend(ServiceActivity(component_code="t_none")).extend(EmptyEndEvent())
    sub = SubProcess(start=inner, params={"${p}": Var(type=Var.SPLICE, value="${a}"),
                                          "${q}": Var(type=Var.SPLICE, value="${b}")})
    start = EmptyStartEvent()
    start.extend(first).extend(second).extend(sub).extend(EmptyEndEvent())
    tree = build_tree(start, data=Data(inputs={"${a}": NodeOutput(source_act=first.id, source_key="outputs"),
                                               "${b}": NodeOutput(source_act=second.id, source_key="outputs")}))
    healthy_beside(runtime, tree)
    wait_state(runtime, sub.id, "FAILED", timeout=60)
    ex = outputs(runtime, sub.id)["ex_data"]
    assert ex.startswith("subprocess params hydrate failed: inputs the store cannot hold: '${"), ex
    assert "too many with the others (7,000,000 are stored in all)" in ex and "engine error" not in ex, ex
    assert outputs(runtime, second.id)["outputs"] == {"k": "o" * 4_000_000}
