"""The component test harness (ComponentTestMixin and friends) and run_component."""

from __future__ import annotations

import pytest

from culm.components import (
    Component,
    ComponentNotFoundError,
    InputItem,
    IntItemSchema,
    OutputItem,
    Service,
    SquareIntervalGenerator,
    StaticIntervalGenerator,
)
from culm.components.testing import (
    Call,
    CallAssertion,
    ComponentRun,
    ComponentTestCase,
    ComponentTestMixin,
    ExecuteAssertion,
    Patcher,
    ScheduleAssertion,
    assert_component_cases,
    run_component,
)

pytestmark = pytest.mark.timeout(30)

NOTIFY = f"{__name__}.notify"


def notify(value):  # replaced by a Patcher in the tests
    raise RuntimeError("the real notify must not run in unit tests")


# --------------------------------------------------------------------------- components under test


class AddService(Service):
    """Adds two ints; fails on b == 0, raises on a negative a, notifies the sum."""

    def inputs_format(self):
        return [InputItem("A", "a", "int", schema=IntItemSchema("a")), InputItem("B", "b", "int")]

    def outputs_format(self):
        return [OutputItem("Sum", "sum", "int", schema=IntItemSchema("sum"))]

    def execute(self, data, parent_data):
        a, b = data.inputs.a, data.get_one_of_inputs("b")
        if a < 0:
            raise ValueError("a must not be negative")
        if b == 0:
            data.set_outputs("ex_data", "b is zero")
            return False
        data.outputs.sum = a + b + parent_data.get_one_of_inputs("offset", 0)
        notify(data.outputs.sum)
        return True


class AddComponent(Component):
    code = "test_harness_add"
    name = "Add"
    bound_service = AddService


class CountdownService(Service):
    """Polls ``polls`` times; fails when ``remaining`` reaches ``fail_at``."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(7)

    def execute(self, data, parent_data):
        data.outputs.remaining = data.inputs.polls
        return True

    def schedule(self, data, parent_data, callback_data=None):
        # Instance attributes do not survive between polls (fresh instance each time).
        self.seen = getattr(self, "seen", 0) + 1
        data.outputs.instance_calls = self.seen
        data.outputs.remaining -= 1
        if data.outputs.remaining == data.get_one_of_inputs("fail_at"):
            return False
        if data.outputs.remaining == 0:
            self.finish_schedule()
        return True


class CountdownComponent(Component):
    code = "test_harness_countdown"
    name = "Countdown"
    bound_service = CountdownService
    version = "1.0"


class ApprovalService(Service):
    __need_schedule__ = True

    def execute(self, data, parent_data):
        return True

    def schedule(self, data, parent_data, callback_data=None):
        data.outputs.approved = callback_data["approved"]
        return callback_data["approved"]


class ApprovalComponent(Component):
    code = "test_harness_approval"
    name = "Approval"
    bound_service = ApprovalService


class CollectService(Service):
    __need_schedule__ = True
    __multi_callback_enabled__ = True

    def execute(self, data, parent_data):
        data.outputs["items"] = []
        return True

    def schedule(self, data, parent_data, callback_data=None):
        # `items` names a dict method, so it needs item access (attribute reads find the method).
        data.outputs["items"] = [*data.outputs["items"], callback_data["item"]]
        if callback_data.get("last"):
            self.finish_schedule()
        return True


class CollectComponent(Component):
    code = "test_harness_collect"
    name = "Collect"
    bound_service = CollectService


# --------------------------------------------------------------------------- harness: passing cases


def add_case(name="adds", inputs=None, outputs=None, success=True, **kwargs):
    return ComponentTestCase(
        name=name,
        inputs=inputs if inputs is not None else {"a": 1, "b": 2},
        parent_data={"offset": 10},
        execute_assertion=ExecuteAssertion(
            success=success, outputs=outputs if outputs is not None else {"sum": 13}
        ),
        schedule_assertion=None,
        patchers=[Patcher(NOTIFY, return_value="sent")],
        **kwargs,
    )


class TestAddComponentWithMixin(ComponentTestMixin):
    """Collected by pytest: proves the mixin works as a plain pytest class."""

    def component_cls(self):
        return AddComponent

    def cases(self):
        return [
            add_case(execute_call_assertion=[CallAssertion(func=NOTIFY, calls=[Call(13)])]),
            add_case(
                "fails on zero",
                inputs={"a": 1, "b": 0},
                outputs={"ex_data": "b is zero"},
                success=False,
                execute_call_assertion=[CallAssertion(func=NOTIFY, calls=[])],
            ),
            add_case("raises", inputs={"a": -1, "b": 1}, outputs={}, success=False),
        ]


def test_poll_cases_pass():
    assert_component_cases(
        CountdownComponent,
        [
            ComponentTestCase(
                name="three polls",
                inputs={"polls": 3},
                parent_data={},
                execute_assertion=ExecuteAssertion(True, {"remaining": 3}),
                schedule_assertion=[
                    ScheduleAssertion(True, {"remaining": 2, "instance_calls": 1}),
                    ScheduleAssertion(True, {"remaining": 1, "instance_calls": 1}),
                    ScheduleAssertion(True, {"remaining": 0, "instance_calls": 1}, schedule_finished=True),
                ],
            ),
            ComponentTestCase(
                name="fails on second poll",
                inputs={"polls": 3, "fail_at": 1},
                parent_data={},
                execute_assertion=ExecuteAssertion(True, {"remaining": 3}),
                schedule_assertion=[
                    ScheduleAssertion(True, {"remaining": 2, "instance_calls": 1}),
                    ScheduleAssertion(False, {"remaining": 1, "instance_calls": 1}),
                ],
            ),
        ],
    )


def test_callback_and_multi_callback_cases_pass():
    assert_component_cases(
        ApprovalComponent,
        [
            ComponentTestCase(
                inputs={},
                parent_data={},
                execute_assertion=ExecuteAssertion(True, {}),
                schedule_assertion=ScheduleAssertion(
                    True, {"approved": True}, callback_data={"approved": True}
                ),
            )
        ],
    )
    assert_component_cases(
        CollectComponent,
        [
            ComponentTestCase(
                inputs={},
                parent_data={},
                execute_assertion=ExecuteAssertion(True, {"items": []}),
                schedule_assertion=[
                    ScheduleAssertion(True, {"items": [1]}, callback_data={"item": 1}),
                    ScheduleAssertion(
                        True,
                        {"items": [1, 2]},
                        callback_data={"item": 2, "last": True},
                        schedule_finished=True,
                    ),
                ],
            )
        ],
    )


# --------------------------------------------------------------------------- harness: failure reporting


class _WrongAddCases(ComponentTestMixin):
    def component_cls(self):
        return AddComponent

    def cases(self):
        return [
            add_case("good"),
            add_case("wrong sum", outputs={"sum": 99}),
            add_case("wrong success", success=False),
        ]


def test_wrong_assertions_fail_together():
    with pytest.raises(AssertionError) as info:
        _WrongAddCases().test_component()
    message = str(info.value)
    assert "2 case(s)" in message
    assert "case wrong sum" in message and "'sum' is 13, expected 99" in message
    assert "case wrong success" in message and "success is True, expected False" in message
    assert "case good" not in message


def test_unexpected_exception_is_reported_with_traceback():
    with pytest.raises(
        AssertionError, match=r"(?s)success is False, expected True.*ValueError: a must not be negative"
    ):
        assert_component_cases(AddComponent, [add_case("boom", inputs={"a": -5, "b": 1})])


def test_call_assertion_failures():
    cases = [
        add_case("wrong args", execute_call_assertion=[CallAssertion(func=NOTIFY, calls=[Call(1)])]),
        add_case("expected none", execute_call_assertion=[CallAssertion(func=NOTIFY, calls=[])]),
        add_case("unknown target", execute_call_assertion=[CallAssertion(func="x.y", calls=[])]),
    ]
    with pytest.raises(AssertionError) as info:
        assert_component_cases(AddComponent, cases)
    message = str(info.value)
    assert "3 case(s)" in message
    assert "expected no call" in message and "'x.y' is not the target of a Patcher" in message


def test_declared_keys_and_schema_types_are_checked():
    cases = [
        add_case("undeclared input", inputs={"a": 1, "b": 2, "c": 3}),
        add_case("wrong input type", inputs={"a": "1", "b": 2}, outputs={}, success=False),
    ]
    with pytest.raises(AssertionError) as info:
        assert_component_cases(AddComponent, cases)
    message = str(info.value)
    assert "input 'c' is not declared in inputs_format()" in message
    assert "input 'a' is '1', which is not of its schema type 'int'" in message


def test_undeclared_output_is_reported():
    class Leaky(AddService):
        def execute(self, data, parent_data):
            data.outputs.secret = 1
            return super().execute(data, parent_data)

    leaky = type(
        "LeakyComponent",
        (Component,),
        {"__register_ignore__": True, "code": "leaky", "name": "L", "bound_service": Leaky},
    )
    with pytest.raises(AssertionError, match="output 'secret' is not declared in outputs_format"):
        assert_component_cases(leaky, [add_case(outputs={"sum": 13, "secret": 1})])


def test_malformed_declarations_fail_up_front():
    class Twice(AddService):
        def outputs_format(self):
            return [OutputItem("A", "x", "int"), OutputItem("B", "x", "int")]

    twice = type(
        "Twice",
        (Component,),
        {"__register_ignore__": True, "code": "twice", "name": "T", "bound_service": Twice},
    )
    with pytest.raises(AssertionError, match="output key 'x' is declared twice"):
        assert_component_cases(twice, [])


def test_schedule_problems():
    def poll_case(schedules):
        return ComponentTestCase(
            inputs={"polls": 1},
            parent_data={},
            name="p",
            execute_assertion=ExecuteAssertion(True, {"remaining": 1}),
            schedule_assertion=schedules,
        )

    with pytest.raises(AssertionError, match="no ScheduleAssertion is given"):
        assert_component_cases(CountdownComponent, [poll_case(None)])
    with pytest.raises(AssertionError, match="schedule_finished is True, expected False"):
        assert_component_cases(
            CountdownComponent, [poll_case(ScheduleAssertion(True, {"remaining": 0, "instance_calls": 1}))]
        )
    finished = ScheduleAssertion(True, {"remaining": 0, "instance_calls": 1}, schedule_finished=True)
    with pytest.raises(AssertionError, match="node finished, but 1 more ScheduleAssertion remain"):
        assert_component_cases(CountdownComponent, [poll_case([finished, finished])])
    with pytest.raises(AssertionError, match="has no schedule phase"):
        assert_component_cases(AddComponent, [_with_schedule(add_case())])


def _with_schedule(case):
    case.schedule_assertion = ScheduleAssertion(True, {})
    return case


# --------------------------------------------------------------------------- run_component


def test_run_execute_only_by_code(monkeypatch):
    monkeypatch.setattr(f"{__name__}.notify", lambda value: None)
    run = run_component("test_harness_add", {"a": 2, "b": 3}, parent_data={"offset": 1})
    assert run == ComponentRun(success=True, outputs={"sum": 6}, polls=0, finished=True, ex_data=None)


def test_run_failure_and_exception():
    failed = run_component(AddComponent, {"a": 1, "b": 0})
    assert (failed.success, failed.finished, failed.ex_data) == (False, False, "b is zero")
    raised = run_component(AddService, {"a": -1, "b": 0})
    assert not raised.success and not raised.finished
    assert "Traceback" in raised.ex_data and "ValueError: a must not be negative" in raised.ex_data
    assert raised.outputs["ex_data"] == raised.ex_data


def test_run_poll_loop_uses_interval_without_real_sleep():
    waits = []
    run = run_component("test_harness_countdown", {"polls": 4}, version="1.0", sleep=waits.append)
    assert (run.success, run.finished, run.polls) == (True, True, 4)
    assert run.outputs == {"remaining": 0, "instance_calls": 1}
    assert waits == [7, 7, 7]


def test_run_poll_loop_restores_generator_count():
    class Squared(CountdownService):
        interval = SquareIntervalGenerator()

    waits = []
    assert run_component(Squared, {"polls": 4}, sleep=waits.append).finished
    assert waits == [1, 4, 9]


def test_run_poll_failure_and_give_up():
    waits = []
    failed = run_component(CountdownService, {"polls": 5, "fail_at": 3}, sleep=waits.append)
    assert (failed.success, failed.finished, failed.polls) == (False, False, 2)
    waits.clear()
    gave_up = run_component(CountdownService, {"polls": 50}, max_polls=3, sleep=waits.append)
    assert (gave_up.success, gave_up.finished, gave_up.polls, gave_up.ex_data) == (True, False, 3, None)
    assert waits == [7, 7]


def test_run_callback():
    approved = run_component(ApprovalComponent, {}, callback_data={"approved": True})
    assert (approved.success, approved.finished, approved.polls, approved.outputs) == (
        True,
        True,
        1,
        {"approved": True},
    )
    rejected = run_component(ApprovalComponent, {}, callback_data={"approved": False})
    assert (rejected.success, rejected.finished) == (False, False)
    crashed = run_component(ApprovalComponent, {}, callback_data=None)
    assert not crashed.success and "TypeError" in crashed.ex_data


def test_run_multiple_callback_runs_one_schedule():
    assert run_component(CollectComponent, {}, callback_data={"item": 1, "last": True}).finished
    waiting = run_component(CollectComponent, {}, callback_data={"item": 1})
    assert (waiting.success, waiting.finished, waiting.outputs) == (True, False, {"items": [1]})


def test_run_unknown_code():
    with pytest.raises(ComponentNotFoundError, match="nope"):
        run_component("test_harness_nope", {})
    with pytest.raises(ComponentNotFoundError):
        run_component("test_harness_countdown", {})  # registered as version 1.0, not legacy
