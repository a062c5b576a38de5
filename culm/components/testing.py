"""Helpers to test and try components without a pipeline or a database.

Two tools live here:

* :class:`ComponentTestMixin` runs declarative cases against a component, with patched
  dependencies, and reports every failing case at once::

      class TestHttpGet(ComponentTestMixin):
          def component_cls(self):
              return HttpGet

          def cases(self):
              return [
                  ComponentTestCase(
                      name="ok",
                      inputs={"url": "http://x"},
                      parent_data={},
                      execute_assertion=ExecuteAssertion(success=True, outputs={"status": 200}),
                      schedule_assertion=None,
                      patchers=[Patcher("my_plugins.http.fetch", return_value=200)],
                  )
              ]

* :func:`run_component` really runs one component (execute, then its callback or poll loop) and
  returns what happened, which is what a command line "try this component" needs.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

from culm.components import library
from culm.components.component import Component
from culm.components.io import ItemSchema
from culm.components.service import (
    RESERVED_OUTPUT_KEYS,
    SCHEDULE_CALLBACK,
    SCHEDULE_POLL,
    DataObject,
    Service,
)

__all__ = [
    "Call",
    "CallAssertion",
    "ComponentRun",
    "ComponentTestCase",
    "ComponentTestMixin",
    "ExecuteAssertion",
    "Patcher",
    "ScheduleAssertion",
    "assert_component_cases",
    "run_component",
]

#: Builds an expected call for :class:`CallAssertion`: ``Call(1, key="v")``.
Call = mock.call

_TEST_NODE_ID = "test_node_id"
_TEST_ROOT_ID = "test_root_pipeline_id"
# Keys the engine writes or passes itself; they are never part of a component's declarations.
_ENGINE_KEYS = RESERVED_OUTPUT_KEYS | {"ex_data"}


@dataclass
class ExecuteAssertion:
    """What ``execute`` must return and leave in ``data.outputs`` (reserved keys ignored).

    ``outputs=None`` (or omitted) leaves the outputs unchecked.
    """

    success: bool
    outputs: dict[str, Any] | None = None


@dataclass
class ScheduleAssertion:
    """What one ``schedule`` call must return and leave in ``data.outputs``.

    ``callback_data`` is passed to ``schedule``; ``schedule_finished`` is whether the service
    called ``finish_schedule()`` during that call. ``outputs=None`` leaves the outputs unchecked.
    Pass the arguments by keyword, as bamboo's docs do (bamboo's positional order differs).
    """

    success: bool
    outputs: dict[str, Any] | None = None
    callback_data: Any = None
    schedule_finished: bool = False


@dataclass
class CallAssertion:
    """The calls a mock must have received.

    ``func`` is a mock, or the target string of one of the case's :class:`Patcher`. An empty
    ``calls`` means "never called"; otherwise the mock must have received exactly these calls
    (in this order unless ``any_order``).
    """

    func: Any
    calls: list[Any]
    any_order: bool = False


@dataclass
class Patcher:
    """Replaces ``target`` (a dotted path) by a mock for the duration of one case."""

    target: str
    return_value: Any = None
    side_effect: Any = None

    def mock_patcher(self) -> Any:
        """Returns the ``unittest.mock.patch`` that installs the mock."""
        return mock.patch(
            self.target, mock.MagicMock(return_value=self.return_value, side_effect=self.side_effect)
        )


@dataclass
class ComponentTestCase:
    """One scenario for a component: inputs, patches and what each phase must produce.

    ``schedule_assertion`` is one :class:`ScheduleAssertion`, a list of them (one per poll or
    callback), or None for components without a schedule phase. ``execute_call_assertion`` and
    ``schedule_call_assertion`` are lists of :class:`CallAssertion`; the mocks are reset between
    the two phases, so each list only sees the calls of its own phase.
    """

    inputs: dict[str, Any]
    parent_data: dict[str, Any]
    execute_assertion: ExecuteAssertion | None
    schedule_assertion: ScheduleAssertion | list[ScheduleAssertion] | None
    name: str = ""
    patchers: list[Patcher] | None = None
    execute_call_assertion: list[CallAssertion] | None = None
    schedule_call_assertion: list[CallAssertion] | None = None
    service_id: str | None = None
    root_pipeline_id: str | None = None


class ComponentTestMixin:
    """Mix into a test class; implement :meth:`component_cls` and :meth:`cases`.

    Both may be methods or, as bamboo's docs write them, properties. The provided
    ``test_component`` runs every case and fails once, listing every failed case.
    """

    def component_cls(self) -> type[Component]:
        """Returns the component class under test."""
        raise NotImplementedError("implement component_cls() to return the component under test")

    def cases(self) -> list[ComponentTestCase]:
        """Returns the cases to run."""
        raise NotImplementedError("implement cases() to return a list of ComponentTestCase")

    def test_component(self) -> None:
        """Runs every case; raises one AssertionError naming all failed cases."""
        assert_component_cases(_value_of(self.component_cls), _value_of(self.cases))


def _value_of(member: Any) -> Any:
    # A method is called; a property has already given its value (a class or a list of cases).
    return member() if callable(member) and not isinstance(member, type) else member


# --------------------------------------------------------------------------- case runner


def assert_component_cases(component_cls: type[Component], cases: Iterable[ComponentTestCase]) -> None:
    """Runs cases against a component and raises one AssertionError listing every failure.

    Raises:
        AssertionError: the component's declarations are malformed or at least one case failed.
    """
    declaration_problems = _declaration_problems(component_cls().service())
    if declaration_problems:
        raise AssertionError(f"component {component_cls.code!r}: " + "; ".join(declaration_problems))
    failures = []
    for index, case in enumerate(cases):
        problems = _run_case(component_cls, case)
        if problems:
            label = case.name or f"#{index}"
            failures.append(f"case {label}:\n" + "\n".join(_bullet(p) for p in problems))
    if failures:
        raise AssertionError(
            f"{len(failures)} case(s) of component {component_cls.code!r} failed:\n" + "\n".join(failures)
        )


def _bullet(problem: str) -> str:
    # Tracebacks span lines; indent them under their bullet so cases stay readable.
    return "  - " + problem.rstrip("\n").replace("\n", "\n    ")


def _run_case(component_cls: type[Component], case: ComponentTestCase) -> list[str]:
    with contextlib.ExitStack() as stack:
        mocks = {p.target: stack.enter_context(p.mock_patcher()) for p in case.patchers or []}
        service = _case_service(component_cls, case)
        problems = _value_problems("input", service.inputs(), case.inputs)
        data = DataObject(copy.deepcopy(case.inputs))
        parent_data = DataObject(copy.deepcopy(case.parent_data))
        success, error = _call(service.execute, data, parent_data)
        problems += _phase_problems("execute", case.execute_assertion, success, error, data)
        problems += _value_problems("output", service.outputs(), data.outputs)
        problems += _call_problems("execute", case.execute_call_assertion, mocks)
        if success:
            for m in mocks.values():
                m.reset_mock()
            problems += _run_schedules(component_cls, case, data, parent_data)
            problems += _call_problems("schedule", case.schedule_call_assertion, mocks)
        return problems


def _run_schedules(
    component_cls: type[Component], case: ComponentTestCase, data: DataObject, parent_data: DataObject
) -> list[str]:
    kind = _case_service(component_cls, case).schedule_type()
    assertions = _as_list(case.schedule_assertion)
    if kind is None:
        return (
            [f"{len(assertions)} ScheduleAssertion given but the component has no schedule phase"]
            if assertions
            else []
        )
    if not assertions:
        return [f"execute succeeded and the component schedules ({kind}), but no ScheduleAssertion is given"]
    problems: list[str] = []
    for number, expected in enumerate(assertions, 1):
        # A fresh instance per call, as in the engine: state must live in data.outputs.
        service = _case_service(component_cls, case)
        with contextlib.suppress(AttributeError):
            service.callback_data = expected.callback_data
        success, error = _call(service.schedule, data, parent_data, expected.callback_data)
        label = f"schedule #{number}"
        problems += _phase_problems(label, expected, success, error, data)
        finished = service.is_schedule_finished()
        if finished != expected.schedule_finished:
            problems.append(
                f"{label}: schedule_finished is {finished}, expected {expected.schedule_finished}"
            )
        done = finished or (success and kind == SCHEDULE_CALLBACK)
        if (not success or done) and number < len(assertions):
            state = "failed" if not success else "finished"
            problems.append(
                f"{label}: node {state}, but {len(assertions) - number} more ScheduleAssertion remain"
            )
            break
    return problems


def _case_service(component_cls: type[Component], case: ComponentTestCase) -> Service:
    service = component_cls().service()
    root = case.root_pipeline_id or _TEST_ROOT_ID
    service.setup_runtime_attrs(
        id=case.service_id or _TEST_NODE_ID,
        version="test_version",
        root_pipeline_id=root,
        top_pipeline_id=root,
        loop=1,
        inner_loop=1,
    )
    return service


def _as_list(value: ScheduleAssertion | list[ScheduleAssertion] | None) -> list[ScheduleAssertion]:
    if value is None:
        return []
    return [value] if isinstance(value, ScheduleAssertion) else list(value)


def _call(func: Callable[..., Any], *args: Any) -> tuple[bool, str | None]:
    """Calls a service method the way the engine does: False fails, an exception fails."""
    try:
        return func(*args) is not False, None
    except Exception:
        return False, traceback.format_exc()


def _phase_problems(
    label: str,
    expected: ExecuteAssertion | ScheduleAssertion | None,
    success: bool,
    error: str | None,
    data: DataObject,
) -> list[str]:
    if expected is None:
        return []
    problems = []
    if success != expected.success:
        detail = f"\n{error}" if error else ""
        problems.append(f"{label}: success is {success}, expected {expected.success}{detail}")
    if expected.outputs is None:
        return problems
    actual = _without_reserved(data.outputs)
    wanted = _without_reserved(expected.outputs)
    if actual != wanted:
        problems.append(f"{label}: outputs differ: {_describe_diff(wanted, actual)}")
    return problems


def _without_reserved(outputs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in outputs.items() if k not in RESERVED_OUTPUT_KEYS}


def _describe_diff(expected: dict[str, Any], actual: dict[str, Any]) -> str:
    parts = []
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unexpected {{{', '.join(f'{k!r}: {actual[k]!r}' for k in extra)}}}")
    for key in sorted(expected.keys() & actual.keys()):
        if expected[key] != actual[key]:
            parts.append(f"{key!r} is {actual[key]!r}, expected {expected[key]!r}")
    return "; ".join(parts)


def _call_problems(label: str, assertions: list[CallAssertion] | None, mocks: dict[str, Any]) -> list[str]:
    problems = []
    for assertion in assertions or []:
        target = _call_target(assertion.func, mocks)
        if target is None:
            problems.append(f"{label} calls: {assertion.func!r} is not the target of a Patcher of this case")
            continue
        problem = _one_call_problem(target, assertion)
        if problem:
            problems.append(f"{label} calls of {assertion.func!r}: {problem}")
    return problems


def _call_target(func: Any, mocks: dict[str, Any]) -> Any:
    """The mock a :class:`CallAssertion` names: a mock, a Patcher's target, or (as bamboo allows)
    the dotted path of a mock object."""
    if not isinstance(func, str):
        return func
    if func in mocks:
        return mocks[func]
    module_name, _, attr = func.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attr) if module_name else None
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, mock.Mock) else None


def _one_call_problem(target: Any, assertion: CallAssertion) -> str | None:
    if not assertion.calls:
        return f"expected no call, got {target.call_args_list}" if target.call_count else None
    try:
        target.assert_has_calls(assertion.calls, any_order=assertion.any_order)
    except AssertionError as exc:
        return str(exc)
    if target.call_count != len(assertion.calls):
        return f"expected {len(assertion.calls)} call(s), got {target.call_count}: {target.call_args_list}"
    return None


# --------------------------------------------------------------------------- declarations

_SCHEMA_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "string": (str,),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
}


def _declaration_problems(service: Service) -> list[str]:
    problems = []
    for kind, items in (("input", service.inputs()), ("output", service.outputs())):
        seen: set[str] = set()
        for item in items:
            if not isinstance(getattr(item, "key", None), str) or not item.key:
                problems.append(f"{kind} declaration {item!r} has no str key")
            elif item.key in seen:
                problems.append(f"{kind} key {item.key!r} is declared twice")
            seen.add(getattr(item, "key", ""))
            schema = getattr(item, "schema", None)
            if schema is not None and (
                not isinstance(schema, ItemSchema) or schema.type not in _SCHEMA_TYPES
            ):
                problems.append(f"{kind} {item.key!r} has an unknown schema {schema!r}")
    return problems


def _value_problems(kind: str, items: list[Any], values: Mapping[str, Any]) -> list[str]:
    """Checks values against declarations: keys must be declared (if any are) and fit the schema."""
    declared = {item.key: item for item in items if item.key not in _ENGINE_KEYS}
    if not declared:
        return []  # nothing declared means the component documents nothing; there is nothing to check
    problems = []
    for key, value in values.items():
        if key in _ENGINE_KEYS:
            continue
        item = declared.get(key)
        if item is None:
            problems.append(f"{kind} {key!r} is not declared in {kind}s_format()")
        elif item.schema is not None and not _fits(value, item.schema.type):
            problems.append(
                f"{kind} {key!r} is {value!r}, which is not of its schema type {item.schema.type!r}"
            )
    return problems


def _fits(value: Any, schema_type: str) -> bool:
    if value is None:
        return True  # an absent value is a required-ness question, not a type one
    if isinstance(value, bool) and schema_type != "boolean":
        return False  # bool is an int subclass, but a flag is not a number
    return isinstance(value, _SCHEMA_TYPES.get(schema_type, (object,)))


# --------------------------------------------------------------------------- run_component


@dataclass(frozen=True)
class ComponentRun:
    """What :func:`run_component` observed.

    Attributes:
        success: No call failed or raised.
        outputs: ``data.outputs`` at the end (with ``ex_data`` added when a call raised).
        polls: How many times ``schedule`` ran.
        finished: The node would be FINISHED now (False when it failed or still waits).
        ex_data: The traceback of an exception, or the component's own ``ex_data`` on failure.
    """

    success: bool
    outputs: dict[str, Any] = field(default_factory=dict)
    polls: int = 0
    finished: bool = False
    ex_data: str | None = None


def run_component(
    code_or_cls: str | type[Component] | type[Service],
    inputs: dict[str, Any],
    parent_data: dict[str, Any] | None = None,
    callback_data: Any = None,
    version: str | None = None,
    max_polls: int = 100,
    sleep: Callable[[float], Any] = time.sleep,
) -> ComponentRun:
    """Really runs one component outside any pipeline, with no mocking.

    ``execute`` runs first. A callback component then gets one ``schedule`` with
    ``callback_data``; a polling component is polled (the first poll at once, the n-th wait being
    the n-th value of its interval generator, passed to ``sleep``) until it finishes, fails or
    ``max_polls`` is reached. Each call gets a fresh service instance, as in the engine.

    Args:
        code_or_cls: A registered component code, a Component subclass or a Service subclass.
        inputs: The node inputs.
        parent_data: The root pipeline inputs.
        callback_data: Payload for the single schedule of a (multi-)callback component.
        version: Component version when ``code_or_cls`` is a code (None means "legacy").
        max_polls: Give up polling after this many polls (the result is then unfinished).
        sleep: Called with each wait in seconds; pass a no-op in tests.

    Raises:
        ComponentNotFoundError: ``code_or_cls`` is an unknown code.
    """
    new_service = _service_factory(code_or_cls, version)
    data = DataObject(copy.deepcopy(inputs))
    parent = DataObject(copy.deepcopy(parent_data or {}))
    service = new_service()
    success, error = _call(service.execute, data, parent)
    kind = service.schedule_type()
    if not success or kind is None:
        return _result(data, success, error, polls=0, finished=success)
    if kind == SCHEDULE_POLL:
        return _poll(new_service, data, parent, max_polls, sleep)
    service = new_service()
    with contextlib.suppress(AttributeError):
        service.callback_data = callback_data
    success, error = _call(service.schedule, data, parent, callback_data)
    finished = success and (kind == SCHEDULE_CALLBACK or service.is_schedule_finished())
    return _result(data, success, error, polls=1, finished=finished)


def _poll(
    new_service: Callable[[], Service],
    data: DataObject,
    parent: DataObject,
    max_polls: int,
    sleep: Callable[[float], Any],
) -> ComponentRun:
    for polls in range(1, max_polls + 1):
        service = new_service()
        success, error = _call(service.schedule, data, parent, None)
        if not success or service.is_schedule_finished():
            return _result(data, success, error, polls=polls, finished=success)
        if polls < max_polls and service.interval is not None:
            # Each poll has a fresh generator; restore how many waits came before, as the engine does.
            service.interval.count = polls - 1
            sleep(service.interval.next() or 0)
    return _result(data, True, None, polls=max_polls, finished=False)


def _service_factory(
    code_or_cls: str | type[Component] | type[Service], version: str | None
) -> Callable[[], Service]:
    if isinstance(code_or_cls, str):
        component_cls: type[Component] | type[Service] = library.get(code_or_cls, version)
    else:
        component_cls = code_or_cls

    def new_service() -> Service:
        if issubclass(component_cls, Service):
            service = component_cls()
        else:
            service = component_cls().service()
        service.setup_runtime_attrs(
            id=_TEST_NODE_ID,
            version="run_version",
            root_pipeline_id=_TEST_ROOT_ID,
            top_pipeline_id=_TEST_ROOT_ID,
            loop=1,
            inner_loop=1,
        )
        return service

    return new_service


def _result(
    data: DataObject, success: bool, error: str | None, *, polls: int, finished: bool
) -> ComponentRun:
    if error is not None:
        data.set_outputs("ex_data", error)
    ex_data = None if success else data.outputs.get("ex_data")
    return ComponentRun(
        success=success, outputs=dict(data.outputs), polls=polls, finished=finished, ex_data=ex_data
    )
