"""Validation refuses context variables that need themselves (culm.model.variable_cycles)."""

from __future__ import annotations

import pytest

from culm import builder as bd
from culm.errors import TreeInvalidError
from culm.model.validator import prepare_tree, validate_tree
from culm.model.variable_cycles import variable_cycle_problems

pytestmark = pytest.mark.timeout(60)


def _tree(inputs, act=None, sub=None):
    start = bd.EmptyStartEvent()
    act = act or bd.ServiceActivity(component_code="example_component")
    chain = start.extend(act)
    if sub is not None:
        chain = chain.extend(sub)
    chain.extend(bd.EmptyEndEvent())
    return bd.build_tree(start, data=bd.Data(inputs=inputs))


def _splice(value):
    return bd.Var(type=bd.Var.SPLICE, value=value)


def test_two_variables_that_need_each_other_are_one_problem_naming_both():
    tree = _tree({"${a}": _splice("${b}!"), "${b}": _splice("x ${a}"), "${c}": _splice("${a}")})

    (problem,) = validate_tree(tree)

    assert problem.where == "data.inputs"
    assert "reference cycle between context variables: ${a} -> ${b} -> ${a}" in problem.message


def test_a_variable_that_needs_itself():
    (problem,) = validate_tree(_tree({"${me}": _splice("${me} and more")}))
    assert "${me} -> ${me}" in problem.message


def test_cycles_in_lists_dicts_and_lazy_values_are_found():
    tree = _tree({
        "${a}": _splice(["${b}"]),
        "${b}": bd.Var(type=bd.Var.LAZY, custom_type="upper", value={"k": "${c}"}),
        "${c}": _splice("${a}"),
    })
    (problem,) = validate_tree(tree)
    assert "${a} -> ${b} -> ${c} -> ${a}" in problem.message


def test_every_separate_cycle_is_listed_and_prepare_refuses():
    tree = _tree({"${a}": _splice("${b}"), "${b}": _splice("${a}"), "${x}": _splice("${x}")})
    with pytest.raises(TreeInvalidError) as info:
        prepare_tree(tree)
    messages = [p.message for p in info.value.problems]
    assert sum("${a} -> ${b} -> ${a}" in m for m in messages) == 1
    assert sum("${x} -> ${x}" in m for m in messages) == 1


def test_a_chain_without_a_cycle_is_fine_even_when_long():
    inputs = {f"${{v{i}}}": _splice(f"${{v{i + 1}}}+1") for i in range(3000)}
    inputs["${v3000}"] = bd.Var(type=bd.Var.PLAIN, value=0)
    assert validate_tree(_tree(inputs)) == []


def test_keys_written_by_node_outputs_or_preset_by_the_run_break_a_cycle():
    act = bd.ServiceActivity(component_code="example_component")
    with_output = _tree({"${a}": _splice("${b}"), "${b}": bd.NodeOutput(source_act=act.id, source_key="k")}, act=act)
    assert validate_tree(with_output) == []

    cyclic = _tree({"${a}": _splice("${b}"), "${b}": _splice("${a}")})
    assert variable_cycle_problems(cyclic, root_preset={"${b}"}) == []
    assert prepare_tree(cyclic, preset=({"${a}"}, ())).tree["id"] == cyclic["id"]


def test_cycles_inside_a_subprocess_and_what_its_params_preset():
    def sub(params=None):
        sub_start = bd.EmptyStartEvent()
        sub_start.extend(bd.ServiceActivity(component_code="example_component")).extend(bd.EmptyEndEvent())
        data = bd.Data(inputs={"${p}": bd.DataInput(type=bd.Var.SPLICE, value="${q}"), "${q}": _splice("${p}")})
        return bd.SubProcess(start=sub_start, data=data, params=params)

    cyclic = sub()
    (problem,) = validate_tree(_tree({}, sub=cyclic))
    assert problem.where == f"{cyclic.id}.data.inputs" and "${p} -> ${q} -> ${p}" in problem.message

    assert validate_tree(_tree({"${x}": _splice("${x}?")}, sub=sub(bd.Params({"${p}": _splice("${x}")})))) != []
    assert validate_tree(_tree({}, sub=sub(bd.Params({"${p}": bd.Var(type=bd.Var.PLAIN, value=1)})))) == []
    assert variable_cycle_problems(_tree({}, sub=sub()), subprocess_preset={"${q}"}) == []


def test_a_lazy_input_reading_a_cyclic_variable_is_reported_once():
    act = bd.ServiceActivity(component_code="example_component")
    act.component.inputs.x = bd.Var(type=bd.Var.LAZY, custom_type="upper", value="${a}")
    problems = validate_tree(_tree({"${a}": _splice("${b}"), "${b}": _splice("${a}")}, act=act))
    assert len(problems) == 1


def test_garbage_is_passed_over():
    assert variable_cycle_problems(None) == []
    assert variable_cycle_problems({"data": {"inputs": {1: {}, "${a}": "x"}}, "activities": [1]}) == []


def test_bamboo_validator_helper_refuses_the_tree_too():
    from culm.validator import api as validator_api

    with pytest.raises(TreeInvalidError, match=r"\$\{a\} -> \$\{b\} -> \$\{a\}"):
        validator_api.validate_and_process_pipeline(_tree({"${a}": _splice("${b}"), "${b}": _splice("${a}")}))


def _self_reading_lazy_input() -> bd.ServiceActivity:
    act = bd.ServiceActivity(component_code="example_component")
    act.component.inputs.x = bd.Var(type=bd.Var.LAZY, custom_type="upper", value=f"${{x_{act.id}}} again")
    return act


def test_a_cycle_through_lazy_node_inputs_alone_is_found():
    # The data inputs are plain: the lazy input alone makes the tree worth looking at for cycles.
    tree = _tree({"${a}": bd.Var(type=bd.Var.PLAIN, value="x")}, act=_self_reading_lazy_input())
    (problem,) = validate_tree(tree)
    assert "reference cycle" in problem.message
    assert validate_tree(_tree({"${a}": bd.Var(type=bd.Var.PLAIN, value="x")})) == []


def test_a_cycle_in_a_part_the_shape_checks_pass_over_is_still_listed():
    act = _self_reading_lazy_input()
    tree = _tree({}, act=act)
    tree["activities"][act.id]["id"] = "elsewhere"  # its key no longer matches its id: the shape walk stops there
    messages = [p.message for p in validate_tree(tree)]
    assert any("key does not match its id" in m for m in messages)
    assert any("reference cycle" in m for m in messages)
