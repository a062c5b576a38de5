"""tree_warnings: templates and conditions that will not work as written, named before a run."""

from __future__ import annotations

import pytest

from culm.builder import (
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    Params,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)
from culm.model.validator import tree_warnings, validate_tree

pytestmark = pytest.mark.timeout(30)


def line_with(act: ServiceActivity, data: Data | None = None) -> dict:
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    return build_tree(start, data=data)


def test_a_valid_tree_has_no_warnings() -> None:
    act = ServiceActivity(component_code="example_component")
    act.component.inputs.x = Var(type=Var.SPLICE, value="${a + 1} and ${b.upper()}")
    assert tree_warnings(line_with(act)) == []


def test_unparsable_fragments_are_named_with_node_field_and_position() -> None:
    act = ServiceActivity(component_code="example_component")
    act.component.inputs.x = Var(type=Var.SPLICE, value="run ${HOME:-x} then ${a +}")
    act.component.inputs.nested = Var(type=Var.SPLICE, value={"k": ["${1 +}"]})
    act.component.inputs.plain = Var(type=Var.PLAIN, value="${HOME:-x}")  # never rendered
    tree = line_with(act)
    tree["activities"][act.id]["component"]["inputs"]["off"] = {
        "type": "splice", "value": "${HOME:-x}", "need_render": False}
    warnings = tree_warnings(tree)
    assert validate_tree(tree) == []  # warnings are not problems
    assert {w.where for w in warnings} == {act.id}
    messages = sorted(w.message for w in warnings)
    assert len(messages) == 3
    assert any("component input x" in m and "'${HOME:-x}' at position 4" in m and "stay text" in m
               for m in messages)
    assert any("'${a +}' at position 20" in m for m in messages)
    assert any("component input nested" in m and "'${1 +}' at position 0" in m for m in messages)


def test_an_unclosed_or_braced_fragment_is_named() -> None:
    act = ServiceActivity(component_code="example_component")
    act.component.inputs.x = Var(type=Var.SPLICE, value="a ${x")
    (warning,) = tree_warnings(line_with(act))
    assert "'${' at position 2 opens no fragment" in warning.message


def test_data_inputs_and_subprocess_params_and_inner_nodes_are_checked() -> None:
    inner = ServiceActivity(component_code="example_component")
    inner.component.inputs.x = Var(type=Var.SPLICE, value="${p +}")
    sub_start = EmptyStartEvent()
    sub_start.extend(inner).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start, params=Params({"${p}": Var(type=Var.SPLICE, value="${q..r}")}))
    start = EmptyStartEvent()
    start.extend(sub).extend(EmptyEndEvent())
    tree = build_tree(start, data=Data(inputs={"${v}": Var(type=Var.SPLICE, value="${)}")}))
    found = {(w.where, w.message.split(":")[0]) for w in tree_warnings(tree)}
    assert found == {(tree["id"], "data input ${v}"), (sub.id, "param ${p}"), (inner.id, "component input x")}


def test_conditions_that_do_not_parse_are_named() -> None:
    gw = ExclusiveGateway(conditions={0: "${n} == 1", 1: "${n} ==", 2: "${n +} == 1"})
    start = EmptyStartEvent()
    ends = [EmptyEndEvent(), EmptyEndEvent(), EmptyEndEvent()]
    start.extend(gw).connect(*ends)
    tree = build_tree(start)
    flows = tree["gateways"][gw.id]["outgoing"]
    warnings = tree_warnings(tree)
    assert all(w.where == gw.id for w in warnings)
    text = "\n".join(w.message for w in warnings)
    assert flows[0] not in text
    assert f"condition of flow {flows[1]} '${{n}} ==' is not valid condition syntax" in text
    # the unparsable fragment stays text at run time, so the condition fails too: both are named
    assert f"condition of flow {flows[2]}: '${{n +}}' at position 0 does not parse" in text
    assert f"condition of flow {flows[2]} '${{n +}} == 1' is not valid condition syntax" in text


def test_garbage_gives_no_warnings_and_no_exception() -> None:
    assert tree_warnings(None) == []
    assert tree_warnings({"activities": {"a": {"type": "ServiceActivity", "component": "x"}}}) == []


def test_the_check_parses_each_distinct_fragment_once_and_a_bounded_number(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every fragment was parsed, every time: a tree of 100,000 took 1.9 s of CPU per check (culm
    # validate, POST /api/v1/validate). Repeats are parsed once; past the bound the rest are
    # counted, not parsed, and one warning says how many.
    from culm.data import sandbox
    from culm.model import syntax_warnings

    parsed: list[str] = []
    real = sandbox.parse

    def counting(body: str):  # the real parser, counted (it is the cost being bounded)
        parsed.append(body)
        return real(body)

    monkeypatch.setattr(sandbox, "parse", counting)
    act = ServiceActivity(component_code="example_component")
    act.component.inputs.same = Var(type=Var.SPLICE, value=" ".join(["${a +}"] * 500))
    tree = line_with(act)
    warnings = tree_warnings(tree)
    assert len(warnings) == 500 and parsed == ["a +"]  # each repeat named, parsed once
    monkeypatch.setattr(syntax_warnings, "MAX_CHECKED_FRAGMENTS", 10)
    act.component.inputs.many = Var(type=Var.SPLICE, value=" ".join(f"${{a{i} + 1}}" for i in range(30)))
    act.component.inputs.late = Var(type=Var.SPLICE, value="${b +}")
    parsed.clear()
    warnings = tree_warnings(line_with(act))
    assert len(parsed) == 10  # "a +", then 9 of the 30; 21 of them and "b +" are not checked
    assert warnings[-1].message == ("22 ${...} fragments were not checked for syntax: one check parses at most "
                                    "10 distinct fragments")
