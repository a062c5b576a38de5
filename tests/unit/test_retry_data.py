"""What retry_node(data=...) accepts for a SubProcess: keys its pipeline reads, and only those."""

from __future__ import annotations

import pytest

from culm.builder import (
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    Params,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)
from culm.core.retry_data import retry_inputs
from culm.errors import InvalidOperationError
from culm.model.compiled import compile_tree
from culm.model.validator import process_tree


def _subprocess_node():
    inner = ServiceActivity(component_code="example_component")
    inner.component.inputs.x = Var(type=Var.SPLICE, value="${p} ${undeclared}")
    sub_start = EmptyStartEvent()
    sub_start.extend(inner).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start, data=Data(inputs={"${p}": Var(type=Var.PLAIN, value="d")}),
                     params=Params({"${p}": Var(type=Var.PLAIN, value="given")}))
    start = EmptyStartEvent()
    start.extend(sub).extend(EmptyEndEvent())
    return compile_tree(process_tree(build_tree(start))).nodes[sub.id]


def test_subprocess_keys_its_pipeline_reads_are_accepted():
    node = _subprocess_node()
    context = {"${from_run}"}  # e.g. a key run_pipeline(subprocess_context=...) preset
    got = retry_inputs(node, {"${p}": 1, "${undeclared}": 2, "${from_run}": 3, "_escape_render_keys": ["${p}"]},
                       lambda keys: [k for k in keys if k in context])
    assert got == {"${p}": {"type": "splice", "value": 1, "need_render": False},
                   "${undeclared}": {"type": "splice", "value": 2, "need_render": True},
                   "${from_run}": {"type": "splice", "value": 3, "need_render": True}}


@pytest.mark.parametrize("key", ["p", "${unread}", "${P}"])
def test_subprocess_keys_nothing_reads_are_refused_by_name(key):
    node = _subprocess_node()
    with pytest.raises(InvalidOperationError) as refused:
        retry_inputs(node, {"${p}": 1, key: 2}, lambda keys: [])
    assert str(refused.value).startswith(f"retry data for node {node.id}: key {key!r} is neither a param")
