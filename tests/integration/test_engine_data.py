"""Data passing: node outputs, subprocess params/outputs, root data and contexts, pre_render_keys,
update_context_values, preview_node_inputs, lazy variables and templates."""

from __future__ import annotations

import components
import pytest
from engine_fixtures import finish, inputs, node_state, outputs, refused, run, wait_state

from culm import api
from culm.builder import (
    Data,
    DataInput,
    EmptyEndEvent,
    EmptyStartEvent,
    NodeOutput,
    Params,
    RewritableNodeOutput,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)

pytestmark = pytest.mark.timeout(60)


def echo(value, vtype=Var.SPLICE):
    a = ServiceActivity(component_code="t_echo")
    a.component.inputs.x = Var(type=vtype, value=value)
    return a


def chain(*nodes):
    start = EmptyStartEvent()
    tail = start
    for n in nodes:
        tail = tail.extend(n)
    tail.extend(EmptyEndEvent())
    return start


def test_node_output_flows_to_next_node(runtime):
    a, b = echo("first"), echo("${a_out} then")
    tree = build_tree(chain(a, b), data=Data(inputs={"${a_out}": NodeOutput(source_act=a.id, source_key="out")}))
    finish(runtime, tree)
    assert outputs(runtime, b.id)["out"] == "first! then!"


def test_template_rendering_keeps_types_and_evaluates(runtime):
    a = ServiceActivity(component_code="t_echo")
    a.component.inputs.obj = Var(type=Var.SPLICE, value="${d}")
    a.component.inputs.expr = Var(type=Var.SPLICE, value="${n + 1}")
    a.component.inputs.text = Var(type=Var.SPLICE, value="n=${n}, s=${s.upper()}")
    a.component.inputs.nested = Var(type=Var.SPLICE, value={"k": ["${n}", "${s}"]})
    a.component.inputs.missing = Var(type=Var.SPLICE, value="${nope}")
    data = Data(inputs={"${d}": Var(type=Var.PLAIN, value={"a": [1]}), "${n}": Var(type=Var.PLAIN, value=41),
                        "${s}": Var(type=Var.SPLICE, value="x${n}")})
    finish(runtime, build_tree(chain(a), data=data))
    got = inputs(runtime, a.id)
    assert got["obj"] == {"a": [1]}
    assert got["expr"] == "42"
    assert got["text"] == "n=41, s=X41"
    assert got["nested"] == {"k": [41, "x41"]}
    assert got["missing"] == "${nope}"


def test_rewritable_node_output_last_writer_wins(runtime):
    a, b, c = echo("a"), echo("b"), echo("${last}")
    data = Data(inputs={"${last}": RewritableNodeOutput(source_act=[
        {"source_act": a.id, "source_key": "out"}, {"source_act": b.id, "source_key": "out"}])})
    finish(runtime, build_tree(chain(a, b, c), data=data))
    assert inputs(runtime, c.id)["x"] == "b!"


def test_root_pipeline_data_is_parent_data_everywhere(runtime):
    a = ServiceActivity(component_code="t_attrs")
    inner = ServiceActivity(component_code="t_attrs")
    sub = SubProcess(start=chain(inner))
    tree = build_tree(chain(a, sub))
    finish(runtime, tree, root_pipeline_data={"executor": "bob", "n": 1})
    assert outputs(runtime, a.id)["parent_inputs"] == {"executor": "bob", "n": 1}
    assert outputs(runtime, inner.id)["parent_inputs"] == {"executor": "bob", "n": 1}


def test_root_pipeline_context_injects_plain_values(runtime):
    a = echo("${given}")
    tree = build_tree(chain(a))
    finish(runtime, tree, root_pipeline_context={"${given}": "from outside"})
    assert outputs(runtime, a.id)["out"] == "from outside!"


def test_subprocess_context_reaches_every_depth(runtime):
    deep = echo("${preset}")
    inner_sub = SubProcess(start=chain(deep))
    mid = echo("${preset}")
    outer_sub = SubProcess(start=chain(mid, inner_sub))
    top = echo("${preset}")
    tree = build_tree(chain(top, outer_sub))
    finish(runtime, tree, subprocess_context={"${preset}": "ctx"})
    assert inputs(runtime, mid.id)["x"] == "ctx"
    assert inputs(runtime, deep.id)["x"] == "ctx"
    assert inputs(runtime, top.id)["x"] == "${preset}"


def test_subprocess_params_override_and_outputs_return(runtime):
    inner = echo("${p} ${q}")
    sub_data = Data(
        inputs={"${p}": DataInput(type=Var.PLAIN, value="default-p"), "${q}": Var(type=Var.PLAIN, value="q"),
                "${res}": NodeOutput(source_act=inner.id, source_key="out")},
        outputs=["${res}", "${q}"],
    )
    sub = SubProcess(start=chain(inner), data=sub_data, params=Params({"${p}": Var(type=Var.SPLICE, value="${v}-x")}))
    after = echo("${from_sub}")
    data = Data(inputs={"${v}": Var(type=Var.PLAIN, value="V"),
                        "${from_sub}": NodeOutput(source_act=sub.id, source_key="${res}"),
                        "${sub_loop}": NodeOutput(source_act=sub.id, source_key="_loop")},
                outputs=["${from_sub}", "${sub_loop}"])
    tree = build_tree(chain(sub, after), data=data)
    finish(runtime, tree)
    assert inputs(runtime, inner.id)["x"] == "V-x q"
    assert inputs(runtime, sub.id) == {"${p}": "V-x"}
    sub_out = outputs(runtime, sub.id)
    assert sub_out["${res}"] == "V-x q!" and sub_out["${q}"] == "q"
    assert inputs(runtime, after.id)["x"] == "V-x q!"
    assert outputs(runtime, tree["id"]) == {"${from_sub}": "V-x q!", "${sub_loop}": 1}


def test_child_node_outputs_stay_in_child_context(runtime):
    inner = echo("inner")
    sub = SubProcess(start=chain(inner), data=Data(inputs={"${o}": NodeOutput(source_act=inner.id, source_key="out")}))
    after = echo("${o}")
    tree = build_tree(chain(sub, after))
    finish(runtime, tree)
    assert inputs(runtime, after.id)["x"] == "${o}"


def test_pre_render_keys_freeze_values_at_start(runtime):
    components.CountingVariable.calls = 0
    a, b = echo("${c}"), echo("${c}")
    data = Data(inputs={"${c}": Var(type=Var.LAZY, custom_type="t_counting", value="")}, pre_render_keys=["${c}"])
    tree = build_tree(chain(a, b), data=data)
    finish(runtime, tree)
    assert inputs(runtime, a.id)["x"] == inputs(runtime, b.id)["x"]


def test_without_pre_render_keys_lazy_resolved_per_node(runtime):
    components.CountingVariable.calls = 0
    a, b = echo("${c}"), echo("${c}")
    data = Data(inputs={"${c}": Var(type=Var.LAZY, custom_type="t_counting", value="")})
    finish(runtime, build_tree(chain(a, b), data=data))
    assert inputs(runtime, a.id)["x"] != inputs(runtime, b.id)["x"]


def test_pre_render_keys_failure_fails_start_event(runtime):
    start = chain(echo("x"))
    data = Data(inputs={"${bad}": Var(type=Var.LAZY, custom_type="t_lazy_raise", value="")}, pre_render_keys=["${bad}"])
    tree = build_tree(start, data=data)
    run(runtime, tree)
    wait_state(runtime, start.id, "FAILED")
    assert "lazy exploded" in outputs(runtime, start.id)["ex_data"]
    assert api.skip_node(runtime, start.id).result
    wait_state(runtime, tree["id"], "FINISHED")


def test_lazy_variable_gets_value_pipeline_data_and_inner_loop(runtime):
    a = ServiceActivity(component_code="t_echo")
    a.component.inputs.v = Var(type=Var.SPLICE, value="${lz}")
    a.component.inputs.direct = Var(type=Var.LAZY, custom_type="t_upper", value="${name}")
    data = Data(inputs={"${name}": Var(type=Var.PLAIN, value="abc"),
                        "${lz}": Var(type=Var.LAZY, custom_type="t_pdata", value="${name}-1")})
    finish(runtime, build_tree(chain(a), data=data), root_pipeline_data={"k": "v"})
    got = inputs(runtime, a.id)
    assert got["v"] == {"value": "abc-1", "data": {"k": "v"}, "inner_loop": 1}
    assert got["direct"] == "ABC"


def test_lazy_variable_exception_fails_node_with_key(runtime):
    a = echo("${boom}")
    data = Data(inputs={"${boom}": Var(type=Var.LAZY, custom_type="t_lazy_raise", value="")})
    tree = build_tree(chain(a), data=data)
    run(runtime, tree)
    wait_state(runtime, a.id, "FAILED")
    ex = outputs(runtime, a.id)["ex_data"]
    assert "boom" in ex and "lazy exploded" in ex
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"


def test_lazy_activity_input_whose_get_value_raises_fails_the_activity(runtime):
    a = echo("v", vtype=Var.LAZY)
    a.component.inputs.x = Var(type=Var.LAZY, custom_type="t_lazy_raise", value="v")
    tree = build_tree(chain(a))
    run(runtime, tree)
    wait_state(runtime, a.id, "FAILED")
    ex = outputs(runtime, a.id)["ex_data"]
    # As in bamboo, a lazy input lives in the context as ${<input key>_<node id>}.
    assert f"${{x_{a.id}}} (input x)" in ex and "t_lazy_raise" in ex and "lazy exploded" in ex
    assert inputs(runtime, a.id)["x"] == "v"  # the raw value, as configured
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"


def test_a_lazy_variable_raising_an_exception_without_a_message_is_named(runtime):
    a = echo("v", vtype=Var.LAZY)
    a.component.inputs.x = Var(type=Var.LAZY, custom_type="t_lazy_raise", value="bare")
    b = echo("${y}")
    tree = build_tree(chain(a, b), data=Data(inputs={"${y}": Var(type=Var.LAZY, custom_type="t_lazy_raise", value="bare")}))
    run(runtime, tree)
    wait_state(runtime, a.id, "FAILED")
    ex = outputs(runtime, a.id)["ex_data"]
    assert "lazy variable ${x" in ex and ex.endswith("(code 't_lazy_raise') failed: RecursionError"), ex
    assert api.skip_node(runtime, a.id).result
    wait_state(runtime, b.id, "FAILED")
    assert "lazy variable ${y} (code 't_lazy_raise') failed: RecursionError" in outputs(runtime, b.id)["ex_data"]


def test_lazy_subprocess_param_whose_get_value_raises_fails_the_subprocess(runtime):
    inner = echo("${p}")
    sub = SubProcess(start=chain(inner), data=Data(inputs={"${p}": Var(type=Var.PLAIN, value="default")}),
                     params=Params({"${p}": Var(type=Var.LAZY, custom_type="t_lazy_raise", value="v")}))
    tree = build_tree(chain(sub))
    run(runtime, tree)
    wait_state(runtime, sub.id, "FAILED")
    ex = outputs(runtime, sub.id)["ex_data"]
    assert "${p}" in ex and "lazy exploded" in ex
    assert node_state(runtime, inner.id) is None  # the subprocess was never entered


def test_unknown_lazy_type_refused_before_storing(runtime):
    a = echo("${u}")
    tree = build_tree(chain(a), data=Data(inputs={"${u}": Var(type=Var.LAZY, custom_type="t_nope", value="")}))
    refused(api.run_pipeline(runtime, tree), "t_nope")
    assert api.get_pipeline_states(runtime, tree["id"]).data == {}


def test_update_context_values(runtime):
    cb, after = ServiceActivity(component_code="t_callback"), echo("${v}")
    data = Data(inputs={"${v}": Var(type=Var.SPLICE, value="old-${w}"), "${w}": Var(type=Var.PLAIN, value="w")})
    tree = build_tree(chain(cb, after), data=data)
    run(runtime, tree)
    st = wait_state(runtime, cb.id, "RUNNING")
    res = api.update_context_values(runtime, tree["id"], {"${v}": "new", "${not_there}": 1})
    assert res.result, res.message
    values = {v["key"]: v["value"] for v in api.get_pipeline_debug_info(runtime, tree["id"]).data["context_values"]}
    assert values["${v}"] == "new" and "${not_there}" not in values
    from support import wait_until

    wait_until(lambda: outputs(runtime, cb.id).get("waiting"), what="execute")
    assert api.callback(runtime, cb.id, st["version"], {}).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert inputs(runtime, after.id)["x"] == "new"


def test_update_context_values_of_an_ended_pipeline_is_stored_as_bamboo_stores_it(runtime):
    """bamboo overwrites an ended pipeline's context (no state check; the contract is silent), and
    its users read the values back: the API accepts it (only `culm set-context` refuses, exit 5)."""
    a = echo("${v}")
    tree = build_tree(chain(a), data=Data(inputs={"${v}": Var(type=Var.PLAIN, value="old")}))
    finish(runtime, tree)
    res = api.update_context_values(runtime, tree["id"], {"${v}": "new"})
    assert res.result, res.message
    values = {v["key"]: v["value"] for v in api.get_pipeline_debug_info(runtime, tree["id"]).data["context_values"]}
    assert values["${v}"] == "new"
    assert api.get_pipeline_states(runtime, tree["id"]).data[tree["id"]]["state"] == "FINISHED"


def test_update_context_values_refusals(runtime):
    refused(api.update_context_values(runtime, "p" + "0" * 32, {"${a}": 1}), "p" + "0" * 32)
    # a key no tree can have was ignored without a word (a user who wrote "a" for "${a}")
    refused(api.update_context_values(runtime, "p" + "0" * 32, {"${a}": 1, "a": 2}), "key 'a' is not a context key",
            "'${a}'")
    refused(api.update_context_values(runtime, "p" + "0" * 32, {1: 2}), "key 1 is not a context key")


def test_preview_node_inputs(runtime):
    a = ServiceActivity(component_code="t_echo")
    a.component.inputs.x = Var(type=Var.SPLICE, value="${v}-${lz}")
    a.component.inputs.y = Var(type=Var.PLAIN, value="${v}")
    inner = ServiceActivity(component_code="t_echo")
    inner.component.inputs.x = Var(type=Var.SPLICE, value="in ${p}")
    sub = SubProcess(start=chain(inner), data=Data(inputs={"${p}": DataInput(type=Var.PLAIN, value="d")}),
                     params=Params({"${p}": Var(type=Var.SPLICE, value="${v}!")}))
    data = Data(inputs={"${v}": Var(type=Var.PLAIN, value="V"),
                        "${lz}": Var(type=Var.LAZY, custom_type="t_upper", value="low")})
    tree = build_tree(chain(a, sub), data=data)
    res = api.preview_node_inputs(runtime, tree, a.id)
    assert res.result, res.message
    assert res.data["x"] == "V-LOW" and res.data["y"] == "${v}"
    assert api.preview_node_inputs(runtime, tree, sub.id).data == {"${p}": "V!"}
    assert api.preview_node_inputs(runtime, tree, inner.id, subprocess_stack=[sub.id]).data["x"] == "in V!"
    assert api.preview_node_inputs(runtime, tree, a.id, parent_params={"${v}": "P"}).data["x"] == "P-LOW"
    refused(api.preview_node_inputs(runtime, tree, tree["start_event"]["id"]))
    # nothing ran
    assert api.get_pipeline_states(runtime, tree["id"]).data == {}


def test_need_render_false_input_kept_verbatim(runtime):
    a = ServiceActivity(component_code="t_echo")
    a.component.inputs.raw = {"type": "splice", "value": "${v}", "need_render": False}
    finish(runtime, build_tree(chain(a), data=Data(inputs={"${v}": Var(type=Var.PLAIN, value=1)})))
    assert inputs(runtime, a.id)["raw"] == "${v}"


def test_hydrate_failure_records_raw_inputs(runtime):
    a = echo("${boom}")
    tree = build_tree(chain(a), data=Data(inputs={"${boom}": Var(type=Var.LAZY, custom_type="t_lazy_raise",
                                                                  value="")}))
    run(runtime, tree)
    wait_state(runtime, a.id, "FAILED")
    data = api.get_execution_data(runtime, a.id).data
    assert data["inputs"] == {"x": "${boom}"}
    assert data["outputs"]["_result"] is False and data["outputs"]["_loop"] == 1
    assert api.update_context_values(runtime, tree["id"], {"${boom}": "fine"}).result
    assert api.retry_node(runtime, a.id).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert inputs(runtime, a.id)["x"] == "fine"


def test_lazy_variable_sees_inner_loop_of_node(runtime):
    from culm.builder import ExclusiveGateway

    start, end = EmptyStartEvent(), EmptyEndEvent()
    body = echo("${lz}")
    eg = ExclusiveGateway(conditions={0: "${n} < 2", 1: "${n} >= 2"})
    start.extend(body).extend(eg).connect(body, end)
    data = Data(inputs={"${n}": NodeOutput(source_act=body.id, source_key="_loop"),
                        "${lz}": Var(type=Var.LAZY, custom_type="t_pdata", value="v")})
    tree = build_tree(start, data=data)
    finish(runtime, tree, cycle_tolerate=True)
    assert inputs(runtime, body.id)["x"]["inner_loop"] == 2


def test_update_context_values_of_subprocess(runtime):
    wait = ServiceActivity(component_code="t_callback")
    inner = echo("${s}")
    sub = SubProcess(start=chain(wait, inner), data=Data(inputs={"${s}": Var(type=Var.PLAIN, value="old")}))
    tree = build_tree(chain(sub))
    run(runtime, tree)
    st = wait_state(runtime, wait.id, "RUNNING")
    assert api.update_context_values(runtime, sub.id, {"${s}": "new"}).result
    from support import wait_until

    wait_until(lambda: outputs(runtime, wait.id).get("waiting"), what="execute")
    assert api.callback(runtime, wait.id, st["version"], {}).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert inputs(runtime, inner.id)["x"] == "new"


def test_end_event_outputs_with_unresolvable_key_use_key(runtime):
    tree = build_tree(chain(echo("a")), data=Data(inputs={}, outputs=["${never_set}"]))
    finish(runtime, tree)
    assert outputs(runtime, tree["id"]) == {"${never_set}": "${never_set}"}


def test_end_event_outputs_hydrate_failure_fails_end_event(runtime):
    start = chain(echo("a"))
    tree = build_tree(start, data=Data(
        inputs={"${bad}": Var(type=Var.LAZY, custom_type="t_lazy_raise", value="")}, outputs=["${bad}"]))
    run(runtime, tree)
    wait_state(runtime, tree["end_event"]["id"], "FAILED")
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"


def test_preview_leaves_node_outputs_and_passes_root_data(runtime):
    producer = echo("p")
    a = ServiceActivity(component_code="t_echo")
    a.component.inputs.x = Var(type=Var.SPLICE, value="${produced}")
    a.component.inputs.lz = Var(type=Var.LAZY, custom_type="t_pdata", value="${v}")
    data = Data(inputs={"${produced}": NodeOutput(source_act=producer.id, source_key="out"),
                        "${v}": Var(type=Var.PLAIN, value=1)})
    tree = build_tree(chain(producer, a), data=data)
    res = api.preview_node_inputs(runtime, tree, a.id, root_pipeline_data={"r": 2})
    assert res.result, res.message
    assert res.data["x"] == "${produced}"
    assert res.data["lz"]["value"] == 1 and res.data["lz"]["data"] == {"r": 2} and res.data["lz"]["inner_loop"] == -1
    refused(api.preview_node_inputs(runtime, tree, "e-unknown"), "e-unknown")


def test_variables_that_need_each_other_are_refused_before_anything_is_stored(runtime):
    a = echo("${ping}")
    data = Data(inputs={"${ping}": Var(type=Var.SPLICE, value="${pong}"),
                        "${pong}": Var(type=Var.SPLICE, value="${ping}!")})
    tree = build_tree(chain(a), data=data)

    refused(api.run_pipeline(runtime, tree), "reference cycle between context variables", "${ping} -> ${pong} -> ${ping}")
    assert api.get_pipeline_states(runtime, tree["id"]).data == {}

    # A value the run presets for one of them breaks the cycle, as it does when the node runs.
    finish(runtime, tree, root_pipeline_context={"${pong}": "pre"})
    assert inputs(runtime, a.id)["x"] == "pre"


def test_a_lazy_input_of_a_run_stored_without_its_context_variable_still_resolves(tmp_path):
    """Runs stored before culm kept lazy inputs in the context have no ``${<key>_<node id>}``
    variable: the input is then resolved in place, as it was."""
    import sqlite3

    import culm

    gated = ServiceActivity(component_code="t_gate")
    gated.component.inputs.gate = Var(type=Var.PLAIN, value="lazy-legacy")
    lazy = echo("v", vtype=Var.LAZY)
    lazy.component.inputs.x = Var(type=Var.LAZY, custom_type="t_upper", value="${word}")
    tree = build_tree(chain(gated, lazy), data=Data(inputs={"${word}": Var(type=Var.PLAIN, value="old run")}))
    db = tmp_path / "t.db"
    with culm.Runtime(f"sqlite:///{db}") as rt:
        run(rt, tree)
        wait_state(rt, gated.id, "RUNNING")
        with sqlite3.connect(db) as conn:  # what an older version stored: no generated variable
            gone = conn.execute("DELETE FROM culm_context_value WHERE key = ?", (f"${{x_{lazy.id}}}",)).rowcount
        assert gone == 1
        components.gate("lazy-legacy").set()
        wait_state(rt, tree["id"], "FINISHED")
        assert inputs(rt, lazy.id)["x"] == "OLD RUN"
