"""Service, DataObject, interval generators, IO declarations, Component registration and library."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import threading
import uuid

import pytest

import culm.components as components
from culm.components import (
    ArrayItemSchema,
    BooleanItemSchema,
    Component,
    ComponentConflictError,
    ComponentDefinitionError,
    ComponentNotFoundError,
    DataObject,
    DefaultIntervalGenerator,
    FloatItemSchema,
    InputItem,
    IntItemSchema,
    LinearIntervalGenerator,
    NullIntervalGenerator,
    ObjectItemSchema,
    OutputItem,
    Service,
    SquareIntervalGenerator,
    StaticIntervalGenerator,
    StringItemSchema,
    library,
)
from culm.components.service import HOOK_NAMES
from culm.errors import CulmError, PluginConflictError, PluginNotFoundError

pytestmark = pytest.mark.timeout(30)


class NoopService(Service):
    def execute(self, data, parent_data):
        return True


class OtherService(Service):
    def execute(self, data, parent_data):
        return True


@pytest.fixture
def code():
    """A unique component code, unregistered (all versions) after the test."""
    value = f"test_{uuid.uuid4().hex[:10]}"
    yield value
    for version in library.versions(value):
        library.unregister(value, version)


def make_component(code, *, module="tests.fake_plugins", qualname="Comp", version=None, service=NoopService):
    namespace = {"__module__": module, "__qualname__": qualname, "code": code, "name": "n"}
    namespace["bound_service"] = service
    if version is not None:
        namespace["version"] = version
    return type(qualname.rsplit(".", 1)[-1], (Component,), namespace)


# --------------------------------------------------------------------------- Service


def test_service_defaults():
    service = NoopService()
    assert service.need_schedule() is False
    assert service.need_run_hook() is False
    assert service.multi_callback_enabled() is False
    assert service.schedule_type() is None
    assert service.schedule(None, None) is True
    assert service.rollback(None, None) is True
    assert service.inputs() == []
    assert [o.key for o in service.outputs()] == ["_result", "_loop", "_inner_loop"]
    assert isinstance(service.logger, logging.Logger) and service.logger.name == "culm.component"
    assert Service.InputItem is InputItem and Service.OutputItem is OutputItem


def test_service_execute_is_abstract():
    with pytest.raises(NotImplementedError, match="Service"):
        Service().execute(DataObject({}), DataObject({}))


def test_every_hook_returns_true():
    service = NoopService()
    assert len(HOOK_NAMES) == 22
    for hook in HOOK_NAMES:
        assert getattr(service, hook)(DataObject({}), DataObject({}), callback_data={"x": 1}) is True


class _Poll(NoopService):
    __need_schedule__ = True
    interval = StaticIntervalGenerator(3)


class _Callback(NoopService):
    __need_schedule__ = True


class _Multi(NoopService):
    __need_schedule__ = True
    __multi_callback_enabled__ = True


class _MultiWithoutSchedule(NoopService):
    __multi_callback_enabled__ = True


@pytest.mark.parametrize(
    ("service_cls", "expected"),
    [
        (NoopService, None),
        (_Poll, "poll"),
        (_Callback, "callback"),
        (_Multi, "multiple_callback"),
        (_MultiWithoutSchedule, None),
    ],
)
def test_schedule_type(service_cls, expected):
    assert service_cls().schedule_type() == expected


def test_interval_is_copied_per_instance():
    first, second = _Poll(), _Poll()
    first.interval.next()
    assert first.interval is not second.interval and first.interval is not _Poll.interval
    assert (first.interval.count, second.interval.count, _Poll.interval.count) == (1, 0, 0)


def test_finish_schedule_and_clean_status():
    service = _Multi()
    assert not service.is_schedule_finished()
    service.finish_schedule()
    assert service.is_schedule_finished()
    service.clean_status()
    assert not service.is_schedule_finished()


def test_setup_runtime_attrs():
    service = NoopService()
    assert service.id is None and service.loop is None
    logger = logging.getLogger("node.x")
    service.setup_runtime_attrs(
        id="n1",
        version="v1",
        root_pipeline_id="r",
        top_pipeline_id="t",
        loop=2,
        inner_loop=3,
        logger=logger,
        extra="yes",
    )
    assert (service.id, service.version, service.root_pipeline_id, service.top_pipeline_id) == (
        "n1",
        "v1",
        "r",
        "t",
    )
    assert (service.loop, service.inner_loop, service.logger, service.extra) == (2, 3, logger, "yes")
    service.setup_runtime_attrs(logger=None)
    assert service.logger is logger


# --------------------------------------------------------------------------- interval generators


def _waits(generator, n=4):
    return [generator.next() for _ in range(n)]


def test_interval_generators():
    assert _waits(DefaultIntervalGenerator()) == [1, 4, 9, 16]
    assert _waits(SquareIntervalGenerator()) == [1, 4, 9, 16]
    assert _waits(StaticIntervalGenerator(5)) == [5, 5, 5, 5]


def test_null_and_linear_generators_count_and_name_no_wait_as_bamboos_do():
    # bamboo's NullIntervalGenerator and LinearIntervalGenerator only count: next() returns None,
    # which the engine reads as "poll again at once".
    for generator in (NullIntervalGenerator(), LinearIntervalGenerator()):
        assert _waits(generator) == [None, None, None, None] and generator.count == 4


def test_a_linear_generator_subclassed_as_bamboos_guide_does():
    class Linear(LinearIntervalGenerator):
        def next(self):
            super().next()
            return self.count

    assert _waits(Linear()) == [1, 2, 3, 4]


def test_interval_generator_count_can_be_restored():
    generator = SquareIntervalGenerator()
    generator.count = 5
    assert generator.next() == 36 and generator.count == 6


# --------------------------------------------------------------------------- DataObject


def test_data_object_access_styles():
    data = DataObject({"a": 1, "nested": {"b": 2}})
    assert data.inputs.a == 1 and data.inputs["a"] == 1 and data.inputs.nested["b"] == 2
    assert data.get_inputs() is data.inputs
    assert data.get_one_of_inputs("a") == 1 and data.get_one_of_inputs("zz", "dflt") == "dflt"
    data.outputs.x = 10
    data.outputs["y"] = 20
    assert data.set_outputs("z", 30) is True
    assert data.get_outputs() == {"x": 10, "y": 20, "z": 30}
    assert data.outputs.y == 20 and data.get_one_of_outputs("missing") is None
    with pytest.raises(AttributeError):
        _ = data.outputs.missing
    del data.outputs.z
    assert "z" not in data.outputs


def test_data_object_keys_named_like_dict_methods_need_item_access():
    data = DataObject({})
    data.outputs.items = [1]
    assert data.outputs["items"] == [1]
    assert callable(data.outputs.items)


def test_data_object_copies_and_overrides():
    source = {"a": [1]}
    data = DataObject(source, {"o": [2]})
    data.inputs["b"] = 2
    assert source == {"a": [1]}  # the caller's dict is not mutated
    inputs_copy, outputs_copy = data.inputs_copy(), data.outputs_copy()
    inputs_copy["a"].append(9)
    outputs_copy["o"].append(9)
    assert data.inputs.a == [1] and data.outputs.o == [2]
    data.update_outputs({"p": 3})
    assert data.outputs == {"o": [2], "p": 3}
    assert data.reset_outputs({"q": 4}) is True and data.outputs.q == 4 and "p" not in data.outputs
    data.override_inputs({"i": 1})
    data.override_outputs({"j": 2})
    assert data.inputs.i == 1 and data.outputs.j == 2
    assert json.loads(data.serializer()) == {"inputs": {"i": 1}, "outputs": {"j": 2}}


def test_data_object_survives_copy_and_pickle():
    data = DataObject({"a": 1}, {"b": 2})
    for clone in (copy.deepcopy(data), pickle.loads(pickle.dumps(data))):
        assert clone.inputs.a == 1 and clone.outputs.b == 2


def test_data_object_rejects_non_dict_inputs():
    with pytest.raises(TypeError, match="dict"):
        DataObject(["a"])


# --------------------------------------------------------------------------- IO declarations


def test_simple_schemas_as_dict():
    assert IntItemSchema(description="n").as_dict() == {"type": "int", "description": "n", "enum": []}
    assert StringItemSchema("s", enum=["a", "b"]).as_dict() == {
        "type": "string",
        "description": "s",
        "enum": ["a", "b"],
    }
    assert FloatItemSchema("f").as_dict()["type"] == "float"
    assert BooleanItemSchema("b").as_dict()["type"] == "boolean"


def test_nested_schemas_as_dict():
    schema = ObjectItemSchema(
        description="obj",
        property_schemas={"tags": ArrayItemSchema(description="t", item_schema=StringItemSchema("tag"))},
    )
    assert schema.as_dict() == {
        "type": "object",
        "description": "obj",
        "enum": [],
        "properties": {
            "tags": {
                "type": "array",
                "description": "t",
                "enum": [],
                "items": {"type": "string", "description": "tag", "enum": []},
            }
        },
    }


def test_items_as_dict():
    item = InputItem(name="Url", key="url", type="string", schema=StringItemSchema("u"))
    assert item.as_dict() == {
        "name": "Url",
        "key": "url",
        "type": "string",
        "schema": {"type": "string", "description": "u", "enum": []},
        "required": True,
    }
    assert InputItem("A", "a", "int", required=False).as_dict()["required"] is False
    assert OutputItem("Out", "out", "int").as_dict() == {
        "name": "Out",
        "key": "out",
        "type": "int",
        "schema": {},
    }


# --------------------------------------------------------------------------- Component registration


def test_defining_a_component_registers_it(code):
    cls = make_component(code)
    assert library.get(code) is cls
    assert library.get(code, "legacy") is cls
    assert (code, "legacy") in library and (code, None) in library and library.has(code) and code in library.codes()
    assert library.versions(code) == ["legacy"] and cls in library.all()
    assert cls.version == "legacy" and cls.is_default_version is False


def test_versions_are_looked_up_separately(code):
    v1 = make_component(code, qualname="V1", version="1.0")
    v2 = make_component(code, qualname="V2", version="2.0")
    assert library.get(code, "1.0") is v1 and library.get(code, "2.0") is v2
    assert library.versions(code) == ["1.0", "2.0"]
    assert not library.has(code) and (code, "legacy") not in library
    with pytest.raises(ComponentNotFoundError, match="legacy"):
        library.get(code)


def test_not_found_names_code_and_version(code):
    with pytest.raises(ComponentNotFoundError) as info:
        library.get(code, "9.9")
    assert code in str(info.value) and "9.9" in str(info.value)
    assert isinstance(info.value, PluginNotFoundError) and isinstance(info.value, LookupError)
    assert library.versions(code) == []


def test_different_class_for_same_code_conflicts(code):
    first = make_component(code, module="pkg.one", qualname="First")
    with pytest.raises(ComponentConflictError) as info:
        make_component(code, module="pkg.two", qualname="Second")
    assert "pkg.one.First" in str(info.value) and "pkg.two.Second" in str(info.value)
    assert isinstance(info.value, PluginConflictError)
    assert library.get(code) is first


def test_same_class_redefined_replaces_silently(code):
    first = make_component(code, module="pkg.reloaded", qualname="Outer.Comp")
    second = make_component(code, module="pkg.reloaded", qualname="Outer.Comp", service=OtherService)
    assert first is not second
    assert library.get(code) is second
    assert isinstance(library.new_service(code), OtherService)


def test_same_code_different_version_does_not_conflict(code):
    make_component(code, qualname="A")
    make_component(code, qualname="B", version="2")
    assert library.versions(code) == ["2", "legacy"]


@pytest.mark.parametrize("missing", ["code", "name", "bound_service"])
def test_missing_attribute_is_a_definition_error(code, missing):
    namespace = {
        "__module__": "pkg.bad",
        "__qualname__": "Broken",
        "code": code,
        "name": "n",
        "bound_service": NoopService,
    }
    del namespace[missing]
    with pytest.raises(ComponentDefinitionError) as info:
        type("Broken", (Component,), namespace)
    assert "pkg.bad.Broken" in str(info.value) and missing in str(info.value)
    assert isinstance(info.value, CulmError) and isinstance(info.value, ValueError)  # bamboo raises ValueError
    assert not library.has(code)


@pytest.mark.parametrize("falsy", [None, ""])
def test_a_falsy_version_is_the_default_one(code, falsy):
    """bamboo's metaclass sets a falsy ``version`` to "legacy"; a class written so registers there."""
    namespace = {"__module__": "tests.fake_plugins", "code": code, "name": "n", "bound_service": NoopService,
                 "version": falsy}
    cls = type("Falsy", (Component,), namespace)
    assert cls.version == "legacy" and library.get(code) is cls and library.versions(code) == ["legacy"]


def test_bound_service_must_be_a_service_subclass(code):
    with pytest.raises(ComponentDefinitionError, match="bound_service"):
        make_component(code, service=object)


def test_class_level_register_ignore_keeps_a_base_abstract(code):
    concrete_code = code

    class Base(Component):
        __register_ignore__ = True
        name = "base"
        bound_service = NoopService

    class Concrete(Base):
        code = concrete_code

    assert library.get(code) is Concrete
    assert Base not in library.all()


def test_module_level_register_ignore_and_group_name(code, monkeypatch):
    import sys
    import types

    module = types.ModuleType("tests.ignored_plugins")
    module.__register_ignore__ = True
    monkeypatch.setitem(sys.modules, module.__name__, module)
    make_component(code, module=module.__name__)
    assert not library.has(code)

    grouped = types.ModuleType("tests.grouped_plugins")
    grouped.__group_name__ = "My Group"
    monkeypatch.setitem(sys.modules, grouped.__name__, grouped)
    assert make_component(code, module=grouped.__name__).group_name == "My Group"
    assert make_component(code + "b", module="x.some_things").group_name == "Some_Things"
    library.unregister(code + "b")


def test_component_format_and_schema_helpers(code):
    class Described(NoopService):
        def inputs_format(self):
            return [InputItem("Url", "url", "string", schema=StringItemSchema("u"))]

        def outputs_format(self):
            return [OutputItem("Status", "status", "int")]

    cls = make_component(code, service=Described)
    assert [i["key"] for i in cls.inputs_format()] == ["url"]
    assert [o["key"] for o in cls.outputs_format()] == ["status", "_result", "_loop", "_inner_loop"]
    assert cls.get_input_schema("url").as_dict()["type"] == "string"
    assert cls.get_output_schema("status") is None
    with pytest.raises(KeyError, match="nope"):
        cls.get_output_schema("nope")
    assert cls.form_is_embedded() is False
    assert isinstance(cls().service(), Described)


def test_new_service_is_fresh_each_call(code):
    make_component(code)
    first, second = library.new_service(code), library.new_service(code)
    assert isinstance(first, NoopService) and first is not second
    with pytest.raises(ComponentNotFoundError):
        library.new_service(code, "nope")


def test_unregister(code):
    cls = make_component(code)
    assert library.unregister(code) is cls
    assert library.unregister(code) is None
    assert not library.has(code)


def test_concurrent_registration(code):
    errors = []

    def define(i):
        try:
            make_component(f"{code}_{i}", qualname=f"C{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=define, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    try:
        assert errors == []
        assert all(library.has(f"{code}_{i}") for i in range(16))
    finally:
        for i in range(16):
            library.unregister(f"{code}_{i}")


def test_builtin_components():
    assert ("example_component", "legacy") in library
    data = DataObject({"a": 1, "b": [2]})
    assert library.new_service("example_component").execute(data, DataObject({})) is True
    assert data.outputs == {}
    assert library.new_service("pipe_example_component").execute(data, DataObject({})) is True
    assert data.outputs == {"a": 1, "b": [2]}


def test_package_exports():
    for name in components.__all__:
        assert hasattr(components, name), name
    assert components.library is library
    from culm.components import library as imported

    assert imported.get("example_component").code == "example_component"
