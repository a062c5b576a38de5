"""Components used by the distributed tests; worker processes import this module via CULM_IMPORTS.

Each execution appends one line ``<kind> <node_id> <pid> <time>`` to the file named by ``$CULM_TEST_EXEC_LOG``
(opened in append mode: a short write is atomic), so tests count how often a node really ran.
"""

from __future__ import annotations

import os
import time

from culm.components import Component, Service, StaticIntervalGenerator


def record(kind: str, node_id: str) -> None:
    path = os.environ.get("CULM_TEST_EXEC_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{kind} {node_id} {os.getpid()} {time.time():.3f}\n")


class SleepService(Service):
    """Records the execution and sleeps ``seconds`` (input, default 0); given an input ``gate``, holds
    there first (:func:`hold`)."""

    def execute(self, data, parent_data):
        record("execute", self.id)
        hold(data)
        time.sleep(float(data.get_one_of_inputs("seconds", 0) or 0))
        data.set_outputs("pid", os.getpid())
        return True


class SleepComponent(Component):
    code = "dist_sleep"
    name = "sleep"
    bound_service = SleepService


GATE_WAIT = 120.0


def hold_at_gate(gate: str, hold_after: int) -> None:
    """Count this call in the file ``<gate>.calls``; past the first ``hold_after`` calls, wait until
    the file ``gate`` exists (at most GATE_WAIT seconds).

    A kill test opens the gate once it has killed, so the batch it kills cannot end before the
    kill however little CPU the test process gets (on a loaded machine it once did)."""
    with open(f"{gate}.calls", "a", encoding="utf-8") as fh:
        fh.write("call\n")
    with open(f"{gate}.calls", encoding="utf-8") as fh:
        calls = sum(1 for _line in fh)
    deadline = time.monotonic() + GATE_WAIT
    while calls > hold_after and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)


def hold(data) -> None:
    """Given inputs ``gate`` and ``hold_after``, :func:`hold_at_gate`."""
    gate = data.get_one_of_inputs("gate")
    if gate:
        hold_at_gate(gate, int(data.get_one_of_inputs("hold_after")))


class PollService(Service):
    """Finishes on its third poll; given an input ``gate``, its execute holds there first (:func:`hold`)."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0)

    def execute(self, data, parent_data):
        record("execute", self.id)
        hold(data)
        return True

    def schedule(self, data, parent_data, callback_data=None):
        record("poll", self.id)
        polls = int(data.get_one_of_outputs("polls", 0) or 0) + 1
        data.set_outputs("polls", polls)
        if polls >= 3:
            self.finish_schedule()
        return True


class PollComponent(Component):
    code = "dist_poll"
    name = "poll"
    bound_service = PollService


class CallbackService(Service):
    """Waits for one callback and copies its payload to the outputs."""

    __need_schedule__ = True

    def execute(self, data, parent_data):
        record("execute", self.id)
        return True

    def schedule(self, data, parent_data, callback_data=None):
        record("callback", self.id)
        data.set_outputs("received", callback_data)
        self.finish_schedule()
        return True


class CallbackComponent(Component):
    code = "dist_callback"
    name = "callback"
    bound_service = CallbackService


class SlowPollService(PollService):
    """Polls every second (through the timer queue), finishing on the third poll."""

    interval = StaticIntervalGenerator(1)


class SlowPollComponent(Component):
    code = "dist_slow_poll"
    name = "slow poll"
    bound_service = SlowPollService
