"""Components with the codes and behaviour of bamboo-pipeline's integration-test components.

bamboo-pipeline's own integration suite (``test/eri_imp_test_use``) runs its trees against a fixed
set of test components (``debug_node``, ``loop_count_node``, ``fail_ctrl_node``, ``callback_node``,
``hook_debug_node`` ...). These are written here from their described behaviour, with culm's
imports, so that ``test_bamboo_suite*.py`` can build the same trees. Imported by the test process
and by every ``culm worker`` of the distributed backends (``WORKER_ENV`` in ``conftest.py``).
Services keep nothing between calls except in ``data.outputs``.
"""

from __future__ import annotations

from components import gate

from culm.components import Component, Service, StaticIntervalGenerator
from culm.events import ExecutableEndEvent
from culm.variables import LazyVariable

# -- hooks -------------------------------------------------------------------------------------
HOOKED = (
    "node_enter", "pre_execute", "post_execute", "node_execute_fail", "node_execute_exception",
    "pre_schedule", "post_schedule", "node_schedule_fail", "node_schedule_exception", "node_finish",
    "pre_pause_node", "post_pause_node", "pre_retry_node", "post_retry_node", "pre_skip_node",
    "post_skip_node", "pre_forced_fail_activity", "post_forced_fail_activity", "pre_callback",
    "post_callback",
)


def record(data, name):
    """Count ``name`` in output ``name`` and append it to output ``hook_call_order``."""
    data.set_outputs(name, data.get_one_of_outputs(name, 0) + 1)
    data.set_outputs("hook_call_order", [*data.get_one_of_outputs("hook_call_order", []), name])
    return True


# bamboo's test mixin takes ``callback_data`` in these hooks only; the others are written
# ``(self, data, parent_data)``, so a call that passes a payload fails (and is swallowed).
WITH_CALLBACK_DATA = ("pre_callback", "post_callback", "node_schedule_fail", "node_schedule_exception")


def _hook(name):
    if name in WITH_CALLBACK_DATA:
        def hook(self, data, parent_data, callback_data=None):
            return record(data, name)
    else:
        def hook(self, data, parent_data):
            return record(data, name)

    hook.__name__ = name
    return hook


class HookMixin:
    """Records every hook (and execute / schedule) in the outputs, as bamboo's test mixin does."""

    __need_run_hook__ = True

    def execute(self, data, parent_data):
        record(data, "execute")
        return super().execute(data, parent_data)

    def schedule(self, data, parent_data, callback_data=None):
        record(data, "schedule")
        return super().schedule(data, parent_data, callback_data)


for _name in HOOKED:
    setattr(HookMixin, _name, _hook(_name))


# -- plain services ------------------------------------------------------------------------------
def echo_inputs(data):
    for key, value in data.get_inputs().items():
        data.set_outputs(key, value)


class DebugNoScheduleService(Service):
    def execute(self, data, parent_data):
        echo_inputs(data)
        return True


class DebugService(Service):
    """Echoes its inputs, then polls once (interval 0) and finishes."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0)

    def execute(self, data, parent_data):
        echo_inputs(data)
        return True

    def schedule(self, data, parent_data, callback_data=None):
        self.finish_schedule()
        return True


class ScheduleService(Service):
    """Echoes its inputs, then polls until output ``count`` reached 5."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0)

    def execute(self, data, parent_data):
        echo_inputs(data)
        return True

    def schedule(self, data, parent_data, callback_data=None):
        count = data.get_one_of_outputs("count")
        if count is None:
            data.outputs.count = 1
        elif count == 5:
            self.finish_schedule()
        else:
            data.outputs.count += 1
        return True


class LoopCountService(Service):
    """Output ``loop`` = input ``_loop``, and every input echoed."""

    def execute(self, data, parent_data):
        data.outputs.loop = data.inputs._loop
        echo_inputs(data)


class LoopCountScheduleService(Service):
    """Like LoopCountService, but the outputs are written by the third poll."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0)

    def execute(self, data, parent_data):
        return True

    def schedule(self, data, parent_data, callback_data=None):
        count = data.get_one_of_outputs("count")
        if count is None:
            data.outputs.count = 1
        elif count == 2:
            data.outputs.loop = data.inputs._loop
            echo_inputs(data)
            self.finish_schedule()
        else:
            data.outputs.count += 1
        return True


class FailAtSecondService(Service):
    """Fails on its first loop unless input ``can_go`` is truthy."""

    def execute(self, data, parent_data):
        if data.inputs._loop == 1 and not data.inputs.get("can_go", False):
            return False
        data.outputs.loop = data.inputs._loop
        echo_inputs(data)


class FailCtrlService(Service):
    """Fails when input ``bit`` is 0 (the default)."""

    def execute(self, data, parent_data):
        return int(data.get_one_of_inputs("bit", 0)) != 0


class CallbackService(Service):
    """Waits for one callback; ``{"bit": 0}`` fails the node."""

    __need_schedule__ = True
    interval = None

    def execute(self, data, parent_data):
        return True

    def schedule(self, data, parent_data, callback_data=None):
        if callback_data and int(callback_data.get("bit", 0)) == 0:
            return False
        return True


class MultiCallbackService(Service):
    """Takes callbacks until the fifth; ``{"bit": 0}`` fails the node."""

    __need_schedule__ = True
    __multi_callback_enabled__ = True
    interval = None

    def execute(self, data, parent_data):
        return True

    def schedule(self, data, parent_data, callback_data=None):
        times = data.get_one_of_outputs("_scheduled_times", 0)
        if callback_data and int(callback_data.get("bit", 0)) == 0:
            return False
        data.set_outputs("_scheduled_times", times + 1)
        if times + 1 == 5:
            self.finish_schedule()
        return True


class RaiseService(Service):
    """Raises in execute or schedule when input ``execute_raise`` / ``schedule_raise`` is set."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0)

    def execute(self, data, parent_data):
        if data.get_one_of_inputs("execute_raise", False):
            raise Exception()
        data.set_outputs("execute_count", 1)
        return True

    def schedule(self, data, parent_data, callback_data=None):
        if data.get_one_of_inputs("schedule_raise", False):
            raise Exception()
        data.set_outputs("schedule_count", 1)
        self.finish_schedule()
        return True


class HookDebugService(HookMixin, DebugService):
    pass


class HookFailCtrlService(HookMixin, FailCtrlService):
    pass


class HookCallbackService(HookMixin, CallbackService):
    pass


class HookRaiseService(HookMixin, RaiseService):
    pass


class HookMultiCallbackService(HookMixin, MultiCallbackService):
    pass


def _component(code, service):
    """Define (and so register) a component ``code`` bound to ``service``."""
    return type(f"Bs{service.__name__}Component", (Component,), {
        "code": code, "name": code, "bound_service": service, "__module__": __name__,
    })


COMPONENTS = {
    "debug_no_schedule_node": DebugNoScheduleService,
    "debug_node": DebugService,
    "schedule_node": ScheduleService,
    "loop_count_node": LoopCountService,
    "loop_count_s_node": LoopCountScheduleService,
    "fail_at_second_node": FailAtSecondService,
    "fail_ctrl_node": FailCtrlService,
    "callback_node": CallbackService,
    "multi_callback_node": MultiCallbackService,
    "interrupt_raise_test": RaiseService,
    "hook_debug_node": HookDebugService,
    "hook_fail_ctrl_node": HookFailCtrlService,
    "hook_callback_node": HookCallbackService,
    "hook_interrupt_raise_test": HookRaiseService,
    "hook_multi_callback_node": HookMultiCallbackService,
}
for _code, _service in COMPONENTS.items():
    globals()[f"Bs{_service.__name__}Component"] = _component(_code, _service)


class DummyExecService(Service):
    """Sleeps ``inputs.time`` seconds in execute, then succeeds."""

    def execute(self, data, parent_data):
        import time

        time.sleep(int(data.inputs.time))
        return True


class SleepTimerService(Service):
    """Polls every 0.2 s until ``inputs.bk_timing`` seconds have passed since its first poll (and,
    with ``inputs.hold``, a test's gate of that name is set: culm's addition, see
    test_revoke_pipeline_with_nested_parallel)."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0.2)

    def execute(self, data, parent_data):
        data.set_outputs("eta", str(data.get_one_of_inputs("bk_timing")))
        data.set_outputs("type", "countdown")
        return True

    def schedule(self, data, parent_data, callback_data=None):
        import time

        if not data.get_one_of_outputs("timing_time"):
            data.set_outputs("timing_time", time.time() + int(data.get_one_of_outputs("eta")))
        hold = data.get_one_of_inputs("hold")
        if data.get_one_of_outputs("timing_time") <= time.time() and (not hold or gate(hold).is_set()):
            self.finish_schedule()
        return True


class LoopOutputsService(Service):
    """Node-loop body: output ``outputs`` = ``{"i": _loop, "x": inputs.x}``; fails on loop ``fail_at``."""

    def execute(self, data, parent_data):
        data.outputs.outputs = {"i": data.inputs._loop, "x": data.get_one_of_inputs("x")}
        return data.inputs._loop != data.get_one_of_inputs("fail_at")


for _code, _service in {"dummy_exec_node": DummyExecService, "sleep_timer": SleepTimerService,
                        "loop_outputs_node": LoopOutputsService}.items():
    globals()[f"Bs{_service.__name__}Component"] = _component(_code, _service)


# -- end events ------------------------------------------------------------------------------------
class MyTestEndEvent(ExecutableEndEvent):
    code = "MyTestEndEvent"

    def execute(self, in_subprocess, root_pipeline_id, current_pipeline_id):
        return None


class MyRaiseEndEvent(ExecutableEndEvent):
    code = "MyRaiseEndEvent"

    def execute(self, in_subprocess, root_pipeline_id, current_pipeline_id):
        raise Exception("end event raised on purpose")


# -- lazy variables --------------------------------------------------------------------------------
class UpperCaseVariable(LazyVariable):
    code = "upper_case"

    def get_value(self):
        return self.value.upper()


class RaiseVariable(LazyVariable):
    code = "raise_variable"

    def get_value(self):
        raise Exception("raise_variable raised on purpose")


# -- bamboo's component guide (docs/user_guide/custom_component.md), imports swapped -----------------
class WaitCallbackService(Service):
    __need_schedule__ = True

    def _external_api_call(self):
        pass

    def execute(self, data, parent_data):
        self._external_api_call()
        return True

    def schedule(self, data, parent_data, callback_data=None):
        status = self.callback_data["status"]

        if status < 0:
            data.outputs.ex_data = "task failed with code: %s" % status  # noqa: UP031 - as the guide writes it
            return False

        self.finish_schedule()


class WaitCallbackComponent(Component):
    name = "WaitCallbackComponent"
    code = "guide_wait_callback"
    bound_service = WaitCallbackService
