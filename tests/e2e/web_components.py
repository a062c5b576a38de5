"""Components for the web service tests (codes start with ``web_``)."""

from __future__ import annotations

import threading

from culm.components import Component, Service
from culm.components.io import InputItem, IntItemSchema, OutputItem
from culm.variables import LazyVariable


class DivideService(Service):
    """Divides 100 by ``divisor``: a divisor of 0 fails the node (ZeroDivisionError)."""

    def inputs_format(self):
        return [InputItem("divisor", "divisor", "int", schema=IntItemSchema("what 100 is divided by"))]

    def outputs_format(self):
        return [OutputItem("result", "result", "float")]

    def execute(self, data, parent_data):
        divisor = data.get_one_of_inputs("divisor")
        self.logger.info("dividing 100 by %s", divisor)
        data.outputs.result = 100 / divisor
        return True


class DivideComponent(Component):
    code = "web_divide"
    name = "Divide 100"
    bound_service = DivideService


class WaitService(Service):
    """Stays RUNNING until a callback arrives; its payload becomes the output ``got``."""

    __need_schedule__ = True
    interval = None

    def execute(self, data, parent_data):
        return True

    def schedule(self, data, parent_data, callback_data=None):
        data.outputs.got = callback_data
        return True


class WaitComponent(Component):
    code = "web_wait"
    name = "Wait for a callback"
    bound_service = WaitService


class ExplodingVariable(LazyVariable):
    """A lazy variable whose value cannot be had: a subprocess taking it as a param fails on entry."""

    code = "web_lazy_explodes"

    def get_value(self):
        raise RuntimeError("the lazy variable exploded")


# A preview storm's renders are held here (test_web_api), each counted as it starts.
SLOW_RELEASE = threading.Event()
SLOW_STARTED: list[int] = []


class SlowVariable(LazyVariable):
    """Gives its value once SLOW_RELEASE is set (at most ``value`` seconds): a preview rendering
    it holds a thread of the service that long."""

    code = "web_lazy_slow"

    def get_value(self):
        SLOW_STARTED.append(1)
        SLOW_RELEASE.wait(float(self.value))
        return "slow"


def _holding_itself() -> list:
    value: list = ["a"]
    value.append(value)
    return value


# What a component may return that JSON cannot write as it is (the store pickles them).
AWKWARD_OUTPUTS = {
    "long int": lambda: 10**5000,
    "tuple key": lambda: {(1, 2): "pair"},
    "holds itself": _holding_itself,
    "set": lambda: {3},
}


class AwkwardService(Service):
    """Outputs ``out``: the value of AWKWARD_OUTPUTS named by the input ``kind``."""

    def execute(self, data, parent_data):
        data.outputs.out = AWKWARD_OUTPUTS[data.get_one_of_inputs("kind")]()
        return True


class AwkwardComponent(Component):
    code = "web_awkward"
    name = "Output a value JSON cannot write"
    bound_service = AwkwardService


class OrderService(Service):
    """Takes inputs of every JSON kind (``amount`` int, ``note`` text, ``express`` bool, ``tags``
    list); fails above an amount of 100, else outputs them as ``got``."""

    def execute(self, data, parent_data):
        amount = data.get_one_of_inputs("amount")
        if not isinstance(amount, int) or amount > 100:
            data.outputs.ex_data = f"amount {amount!r} is over the limit of 100"
            return False
        data.outputs.got = {k: data.get_one_of_inputs(k) for k in ("amount", "note", "express", "tags")}
        return True


class OrderComponent(Component):
    code = "web_order"
    name = "Take an order"
    bound_service = OrderService


class RefusingWaitService(WaitService):
    """Waits for a callback, then fails it: ``schedule`` returns False and sets no ex_data."""

    def schedule(self, data, parent_data, callback_data=None):
        return False


class RefusingWaitComponent(Component):
    code = "web_wait_refuses"
    name = "Wait for a callback, then refuse it"
    bound_service = RefusingWaitService


class EchoService(Service):
    """Logs, outputs and (with ``fail``) fails with the input ``text``: untrusted text everywhere."""

    def execute(self, data, parent_data):
        text = data.get_one_of_inputs("text")
        self.logger.info("echo: %s", text)
        data.outputs.echoed = text
        if data.get_one_of_inputs("fail"):
            data.outputs.ex_data = f"failed on {text}"
            return False
        return True


class EchoComponent(Component):
    code = "web_echo"
    name = "Echo a text"
    bound_service = EchoService
