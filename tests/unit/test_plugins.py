"""Lazy variables and executable end events: registration, conflicts and lookup."""

from __future__ import annotations

import uuid

import pytest

from culm import events, variables
from culm.errors import CulmError, PluginConflictError, PluginNotFoundError
from culm.events import (
    EndEventConflictError,
    EndEventDefinitionError,
    EndEventNotFoundError,
    ExecutableEndEvent,
)
from culm.variables import LazyVariable, VariableConflictError, VariableDefinitionError, VariableNotFoundError

pytestmark = pytest.mark.timeout(30)

KINDS = [
    pytest.param(
        variables,
        LazyVariable,
        VariableConflictError,
        VariableNotFoundError,
        VariableDefinitionError,
        id="variables",
    ),
    pytest.param(
        events,
        ExecutableEndEvent,
        EndEventConflictError,
        EndEventNotFoundError,
        EndEventDefinitionError,
        id="events",
    ),
]


@pytest.fixture
def code():
    value = f"test_{uuid.uuid4().hex[:10]}"
    yield value
    variables.library.unregister(value)
    events.library.unregister(value)


def define(base, code, module="tests.fake_plugins", qualname="Plugin", **attrs):
    namespace = {"__module__": module, "__qualname__": qualname, "code": code, **attrs}
    return type(qualname.rsplit(".", 1)[-1], (base,), namespace)


# --------------------------------------------------------------------------- shared rules


@pytest.mark.parametrize(("module", "base", "conflict", "not_found", "definition"), KINDS)
def test_defining_registers(code, module, base, conflict, not_found, definition):
    cls = define(base, code)
    assert module.library.get(code) is cls
    assert module.library.has(code) and code in module.library and code in module.library.codes()
    assert cls in module.library.all()


@pytest.mark.parametrize(("module", "base", "conflict", "not_found", "definition"), KINDS)
def test_different_class_conflicts(code, module, base, conflict, not_found, definition):
    first = define(base, code, module="pkg.a", qualname="First")
    with pytest.raises(conflict) as info:
        define(base, code, module="pkg.b", qualname="Second")
    assert isinstance(info.value, PluginConflictError)
    assert "pkg.a.First" in str(info.value) and "pkg.b.Second" in str(info.value) and code in str(info.value)
    assert module.library.get(code) is first


@pytest.mark.parametrize(("module", "base", "conflict", "not_found", "definition"), KINDS)
def test_same_class_redefined_replaces(code, module, base, conflict, not_found, definition):
    define(base, code, module="pkg.reloaded", qualname="Plugin")
    second = define(base, code, module="pkg.reloaded", qualname="Plugin")
    assert module.library.get(code) is second


@pytest.mark.parametrize(("module", "base", "conflict", "not_found", "definition"), KINDS)
def test_not_found(code, module, base, conflict, not_found, definition):
    with pytest.raises(not_found, match=code) as info:
        module.library.get(code)
    assert isinstance(info.value, PluginNotFoundError)
    assert not module.library.has(code) and code not in module.library


def test_missing_code_is_a_definition_error():
    with pytest.raises(VariableDefinitionError, match="pkg.bad.NoCode") as info:
        type("NoCode", (LazyVariable,), {"__module__": "pkg.bad", "__qualname__": "NoCode"})
    assert isinstance(info.value, CulmError)


def test_end_event_without_code_waits_for_register_node(code):
    # bamboo's way: the class has no code; FlowNodeClsFactory.register_node names it.
    cls = type("NoCode", (ExecutableEndEvent,), {"__module__": "pkg.bamboo", "__qualname__": "NoCode"})
    assert cls not in events.library.all()
    events.FlowNodeClsFactory.register_node(code, cls)
    assert events.library.get(code) is cls and events.FlowNodeClsFactory.get_node_cls(code) is cls
    with pytest.raises(EndEventDefinitionError, match="execute"):
        events.FlowNodeClsFactory.register_node(code + "_x", object)


@pytest.mark.parametrize(("module", "base", "conflict", "not_found", "definition"), KINDS)
def test_register_ignore_allows_abstract_bases(code, module, base, conflict, not_found, definition):
    abstract = type("Abstract", (base,), {"__register_ignore__": True})
    concrete = define(abstract, code)
    assert module.library.get(code) is concrete


def test_kinds_have_separate_namespaces(code):
    variable = define(LazyVariable, code)
    end_event = define(ExecutableEndEvent, code)
    assert variables.library.get(code) is variable and events.library.get(code) is end_event


# --------------------------------------------------------------------------- behaviour


def test_lazy_variable_get_value(code):
    variable_code = code

    class Upper(LazyVariable):
        code = variable_code

        def get_value(self):
            return f"{self.value.upper()}-{self.pipeline_data['suffix']}-{self.inner_loop}"

    var = variables.library.get(code)(value="ab", pipeline_data={"suffix": "z"}, inner_loop=2, key="${v}")
    assert isinstance(var, Upper)
    assert var.get_value() == "AB-z-2" and var.key == "${v}"


def test_lazy_variable_defaults():
    var = LazyVariable()
    assert (var.value, var.pipeline_data, var.inner_loop, var.key) == (None, {}, -1, None)
    with pytest.raises(NotImplementedError):
        var.get_value()


def test_end_event_execute(code):
    seen = []

    def execute(self, in_subprocess, root_pipeline_id, current_pipeline_id):
        seen.append((in_subprocess, root_pipeline_id, current_pipeline_id))

    define(ExecutableEndEvent, code, execute=execute)
    events.library.get(code)().execute(True, "root", "sub")
    assert seen == [(True, "root", "sub")]
    with pytest.raises(NotImplementedError):
        ExecutableEndEvent().execute(False, "r", "r")
