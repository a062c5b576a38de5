"""Context keys that no reference can reach are refused (culm.model.tree_shape).

Found probing (session 17): a ``${...}`` reference is read as a Python name, and Python reads
names in Unicode's NFKC form. So a tree's variables ``${é}`` (one character) and ``${é}`` (``e``
plus a combining accent) were both kept, looked the same in the console, and every reference
(however written) read the first: the second could never be reached, and a reviewer reading the
tree could not tell which value a node would get. Now two keys of one context that share their NFKC
form are refused, naming them; a key alone in its form is kept (bamboo ran it: data.outputs, a
splice's source_key and update_context_values reach it) and `tree_warnings` names it.
"""

from __future__ import annotations

import unicodedata

import pytest

from culm import builder as bd
from culm.model.validator import validate_tree

pytestmark = pytest.mark.timeout(60)

COMPOSED = unicodedata.normalize("NFC", "\u00e9")
DECOMPOSED = unicodedata.normalize("NFD", "\u00e9")


def _tree(inputs: dict, params: dict | None = None) -> dict:
    start, act = bd.EmptyStartEvent(), bd.ServiceActivity(component_code="example_component")
    act.component.inputs.x = bd.Var(type=bd.Var.SPLICE, value="${" + COMPOSED + "}")
    start.extend(act).extend(bd.EmptyEndEvent())
    return bd.build_tree(start, data=bd.Data(inputs=inputs))


@pytest.mark.parametrize("key", ["${" + DECOMPOSED + "}", "${\uff45}", "${\ufb01le}"])  # e + accent, fullwidth e, fi ligature
def test_a_context_key_sharing_its_nfkc_form_with_another_is_refused_naming_it(key: str) -> None:
    normal = unicodedata.normalize("NFKC", key)
    tree = _tree({normal: bd.Var(type=bd.Var.PLAIN, value="one"),
                  key: bd.Var(type=bd.Var.PLAIN, value="two")})
    problems = validate_tree(tree)
    assert [p.where for p in problems] == ["data.inputs"], problems
    assert f"data input key {key!r} is not in Unicode's NFKC form" in problems[0].message, problems
    assert repr(normal) in problems[0].message and "reference" in problems[0].message, problems


def test_context_keys_in_nfkc_form_are_kept() -> None:
    tree = _tree({"${" + COMPOSED + "}": bd.Var(type=bd.Var.PLAIN, value="one"),
                  "${\u4e2d\u6587}": bd.Var(type=bd.Var.PLAIN, value="two")})
    assert validate_tree(tree) == []


def test_two_keys_of_one_form_are_refused_even_when_neither_is_in_nfkc_form() -> None:
    tree = _tree({"${\uff43ount}": bd.Var(type=bd.Var.PLAIN, value=1),   # fullwidth c
                  "${\U0001d41count}": bd.Var(type=bd.Var.PLAIN, value=2)})  # bold c: both read ${count}
    problems = validate_tree(tree)
    assert [p.where for p in problems] == ["data.inputs"], problems
    assert "'${count}'" in problems[0].message and "rename one" in problems[0].message, problems


def test_keys_of_one_form_in_different_contexts_are_kept() -> None:
    # A subprocess's params are keys of its own context, not of the parent's.
    start, sub_start = bd.EmptyStartEvent(), bd.EmptyStartEvent()
    sub_start.extend(bd.ServiceActivity(component_code="example_component")).extend(bd.EmptyEndEvent())
    sub = bd.SubProcess(start=sub_start, data=bd.Data(inputs={"${count}": bd.Var(type=bd.Var.PLAIN, value=1)}),
                        params=bd.Params({"${count}": bd.Var(type=bd.Var.PLAIN, value=3)}))
    start.extend(sub).extend(bd.EmptyEndEvent())
    tree = bd.build_tree(start, data=bd.Data(inputs={"${\uff43ount}": bd.Var(type=bd.Var.PLAIN, value=2)}))
    assert validate_tree(tree) == []


def test_a_key_alone_in_its_form_is_kept_with_a_warning_and_runs(tmp_path) -> None:
    """Found reviewing (session 17): the refusal of every key not in NFKC form refused bamboo trees
    that ran before, e.g. a key with full-width brackets (usual in Chinese text) read through
    data.outputs. Such a key is kept, and `tree_warnings` names it."""
    import time

    import culm
    from culm import api
    from culm.model import tree_warnings

    key = "${结果（成功）}"
    start, act = bd.EmptyStartEvent(), bd.ServiceActivity(component_code="example_component")
    start.extend(act).extend(bd.EmptyEndEvent())
    data = bd.Data()
    data.inputs[key] = bd.Var(type=bd.Var.PLAIN, value=5)
    data.outputs = [key]
    tree = bd.build_tree(start, data=data)
    assert validate_tree(tree) == []
    warnings = tree_warnings(tree)
    assert [(w.where, key in w.message and "NFKC" in w.message) for w in warnings] == [(tree["id"], True)], warnings
    with culm.Runtime(f"sqlite:///{tmp_path}/c.db") as rt:
        assert api.run_pipeline(rt, tree).result
        deadline = time.monotonic() + 30
        while (state := api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["state"]) != "FINISHED":
            assert time.monotonic() < deadline and state == "RUNNING", state
            time.sleep(0.05)
        assert api.get_execution_data_outputs(rt, tree["id"]).data == {key: 5}


def test_a_reference_written_in_another_form_is_named_by_a_warning() -> None:
    """`${ｃount}` (fullwidth c) reads the key `${count}`: taken, as bamboo took it, and warned of."""
    from culm.model import tree_warnings

    start, act = bd.EmptyStartEvent(), bd.ServiceActivity(component_code="example_component")
    act.component.inputs.x = bd.Var(type=bd.Var.SPLICE, value="n=${\uff43ount + 1} s=${'\uff08'} c=${count}")
    start.extend(act).extend(bd.EmptyEndEvent())
    tree = bd.build_tree(start, data=bd.Data(inputs={"${count}": bd.Var(type=bd.Var.PLAIN, value=1)}))
    assert validate_tree(tree) == []
    warnings = tree_warnings(tree)
    assert [w.where for w in warnings] == [act.id], warnings  # the string literal and ${count}: nothing
    assert "'${\uff43ount + 1}' at position 2 names '\uff43ount'" in warnings[0].message, warnings
    assert "reads as 'count'" in warnings[0].message and "NFKC" in warnings[0].message, warnings


@pytest.mark.parametrize(("param", "data_input"), [("${\uff43ount}", "${count}"), ("${count}", "${\uff43ount}")])
def test_a_param_and_an_input_of_its_subprocess_sharing_a_form_are_refused(param: str, data_input: str) -> None:
    """A subprocess's params and its pipeline's data inputs are keys of one context."""
    start, sub_start = bd.EmptyStartEvent(), bd.EmptyStartEvent()
    sub_start.extend(bd.ServiceActivity(component_code="example_component")).extend(bd.EmptyEndEvent())
    sub = bd.SubProcess(start=sub_start, data=bd.Data(inputs={data_input: bd.Var(type=bd.Var.PLAIN, value=1)}),
                        params=bd.Params({param: bd.Var(type=bd.Var.PLAIN, value=3)}))
    start.extend(sub).extend(bd.EmptyEndEvent())
    problems = validate_tree(bd.build_tree(start))
    assert [p.where for p in problems] == [sub.id], problems
    assert f"param key {param!r}" in problems[0].message and f"data input {data_input!r}" in problems[0].message
    assert "'${count}'" in problems[0].message, problems
