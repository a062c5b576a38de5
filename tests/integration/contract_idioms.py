"""Plugins of ``test_contract_idioms.py``, written the way bamboo-pipeline users write theirs, with
only the imports changed (``pipeline.component_framework.component`` / ``pipeline.core.flow.activity``
-> ``culm.components``, ``pipeline.core.data.var`` -> ``culm.variables``).

``culm worker`` processes load this module through ``$CULM_IMPORTS`` (with the contract's own
``contract_components``), so everything a test checks travels in outputs, except what the control
hooks see: those run in the process that called the command, and are recorded in :data:`HOOK_CALLS`.
"""

from __future__ import annotations

import uuid

from culm.components import Component, NullIntervalGenerator, Service, SquareIntervalGenerator
from culm.variables import LazyVariable

__group_name__ = "Idioms"  # bamboo: the group components are listed under

HOOK_CALLS: list[tuple[str, str, bool, object]] = []  # (node id, hook, callback_data given, its value)


class EchoService(Service):
    """Copies what it sees to outputs: its inputs, the root pipeline data, a missing input."""

    def inputs_format(self):
        return [self.InputItem(name="A value", key="value", type="string", required=False)]

    def outputs_format(self):
        return [self.OutputItem(name="Inputs seen", key="seen", type="object")]

    def execute(self, data, parent_data):
        data.outputs.seen = {k: v for k, v in data.get_inputs().items() if not k.startswith("_")}
        data.outputs.parent = dict(parent_data.inputs)
        data.outputs.executor = parent_data.get_one_of_inputs("executor")
        data.outputs.missing = data.get_one_of_inputs("nope", "default")
        data.outputs._result = "overwritten by the engine"
        data.outputs.class_version = self.version  # the node's state version, not the component's


class EchoComponent(Component):
    name = "echo"
    code = "ci_echo"
    version = None  # bamboo sets a falsy version to "legacy"
    bound_service = EchoService


class EchoV2Component(EchoComponent):
    """A second version by subclassing the first: code, name and service are inherited."""

    version = "2.0"


class StructuredFailureService(Service):
    """Fails with an ``ex_data`` that is a dict, as some bamboo plugins report errors."""

    def execute(self, data, parent_data):
        data.outputs.ex_data = {"code": 4001, "message": "quota exceeded", "retry": data.inputs.get("n", 0)}
        return False


class StructuredFailureComponent(Component):
    name = "structured failure"
    code = "ci_fail_dict"
    bound_service = StructuredFailureService


def _hook(name):
    # As bamboo's docs write hooks: (self, data, parent_data), callback_data only as a keyword.
    def hook(self, data, parent_data, **kwargs):
        HOOK_CALLS.append((self.id, name, "callback_data" in kwargs, kwargs.get("callback_data")))
        data.outputs.setdefault("hooks", []).append([name, "callback_data" in kwargs])

    return hook


class MultiCallbackService(Service):
    """Takes callbacks until one says ``last``; records every hook in its outputs."""

    __need_schedule__ = True
    __multi_callback_enabled__ = True
    __need_run_hook__ = True
    interval = None

    def execute(self, data, parent_data):
        data.outputs.received = []
        return True

    def schedule(self, data, parent_data, callback_data=None):
        data.outputs.received.append(callback_data)
        if callback_data.get("fail"):
            data.outputs.ex_data = "told to fail"
            return False
        if callback_data.get("last"):
            self.finish_schedule()
        return True


for _name in ("node_enter", "pre_execute", "post_execute", "node_execute_fail", "node_execute_exception",
              "pre_schedule", "post_schedule", "node_schedule_fail", "node_schedule_exception", "node_finish",
              "pre_callback", "post_callback", "pre_retry_node", "post_retry_node", "pre_skip_node",
              "post_skip_node", "pre_forced_fail_activity", "post_forced_fail_activity", "pre_pause_node",
              "post_pause_node", "pre_resume_node", "post_resume_node"):
    setattr(MultiCallbackService, _name, _hook(_name))


class MultiCallbackComponent(Component):
    name = "multi callback"
    code = "ci_multi_callback"
    bound_service = MultiCallbackService


class SquarePollService(Service):
    """Polls with bamboo's default interval (0, then 1, 4, 9 ... seconds): done at the third poll."""

    __need_schedule__ = True
    interval = SquareIntervalGenerator()

    def execute(self, data, parent_data):
        data.outputs.polls = 0
        return True

    def schedule(self, data, parent_data, callback_data=None):
        data.outputs.polls += 1
        data.outputs.saw_callback_data = callback_data
        if data.outputs.polls >= 3:
            self.finish_schedule()
        return True


class SquarePollComponent(Component):
    name = "square poll"
    code = "ci_square_poll"
    bound_service = SquarePollService


class NullPollService(SquarePollService):
    """The same with ``NullIntervalGenerator``: polls again without waiting."""

    interval = NullIntervalGenerator()


class NullPollComponent(Component):
    name = "null poll"
    code = "ci_null_poll"
    bound_service = NullPollService


class StampVariable(LazyVariable):
    """A value that differs at every read (bamboo's docs freeze such a value with pre_render_keys)."""

    code = "ci_stamp"

    def get_value(self):
        return f"{self.value}-{uuid.uuid4().hex[:12]}"


class ReturnsService(Service):
    """Returns its input ``give``: bamboo judges what ``execute`` returns by its truth."""

    def execute(self, data, parent_data):
        return data.inputs.give


class ReturnsComponent(Component):
    name = "returns"
    code = "ci_returns"
    bound_service = ReturnsService


class LoopStepService(Service):
    """One iteration of a node loop: fails at iteration ``fail_at``, else reports its step."""

    def execute(self, data, parent_data):
        data.outputs.outputs = {"step": data.inputs._inner_loop}
        return data.inputs._inner_loop != data.get_one_of_inputs("fail_at")


class LoopStepComponent(Component):
    name = "loop step"
    code = "ci_loop_step"
    bound_service = LoopStepService
