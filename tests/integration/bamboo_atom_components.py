"""Components written the way bamboo-pipeline's own test components are (``components/collections``):
a ``Service.__init__(self, name=None)`` that keeps a counter on the instance, ``getattr`` with a
default on ``data.outputs``, dict methods on ``data.inputs``, ``interval = None`` on a callback
service, a ``form`` attribute, and two component classes of one name in one module (bamboo's
module defines ``InterruptScheduleComponent`` twice, for two codes). Imported by the test process
and by every ``culm worker`` of the distributed backends (``WORKER_ENV`` in ``backends.py``).
"""

from __future__ import annotations

import logging
import time

from culm.components import Component, Service, StaticIntervalGenerator

logger = logging.getLogger("celery")


class CountingService(Service):
    """Echoes its inputs and the number of executions of this instance; fails on loop 1 when
    input ``can_go`` is False."""

    def __init__(self, name=None):
        super().__init__(name=name)
        self.execute_count = 0

    def execute(self, data, parent_data):
        for key, val in data.inputs.items():
            data.set_outputs(key, val)
        self.execute_count += 1
        data.set_outputs("execute_count", self.execute_count)
        logger.info("atom_counting_node loop %s", data.inputs._loop)
        if data.inputs._loop == 1 and not data.inputs.get("can_go", True):
            return False
        return True

    def outputs_format(self):
        return []


class InterruptScheduleComponent(Component):
    name = "counting component"
    code = "atom_counting_node"
    bound_service = CountingService
    form = "index.html"


class CountingScheduleService(Service):
    """Polls (interval 0) once, counting executions and schedules of this instance."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(0)

    def __init__(self, name=None):
        super().__init__(name=name)
        self.execute_count = 0
        self.schedule_count = 0

    def execute(self, data, parent_data):
        self.execute_count += 1
        data.set_outputs("execute_count", self.execute_count)
        return True

    def schedule(self, data, parent_data, callback_data=None):
        self.logger.info(f"schedule id: {self.id}")
        self.schedule_count += 1
        data.set_outputs("schedule_count", self.schedule_count)
        self.finish_schedule()
        return True

    def outputs_format(self):
        return []


# Same class name, same module, another code: bamboo's module does this; both codes must stay.
class InterruptScheduleComponent(Component):  # noqa: F811
    name = "counting schedule component"
    code = "atom_counting_schedule_node"
    bound_service = CountingScheduleService
    form = "index.html"


class MultiCallbackService(Service):
    """Finishes on the third good callback; ``bit`` 0 fails it. Counts in ``_scheduled_times``."""

    __need_schedule__ = True
    __multi_callback_enabled__ = True
    interval = None

    def execute(self, data, parent_data):
        return True

    def schedule(self, data, parent_data, callback_data=None):
        _scheduled_times = getattr(data.outputs, "_scheduled_times", 0)
        if callback_data:
            if int(callback_data.get("bit", 0)) == 0:
                return False
        _scheduled_times += 1
        data.set_outputs("_scheduled_times", _scheduled_times)
        if _scheduled_times == 3:
            self.finish_schedule()
        return True

    def outputs_format(self):
        return []


class AtomMultiCallbackComponent(Component):
    name = "multi callback component"
    code = "atom_multi_callback_node"
    bound_service = MultiCallbackService
    form = "index.html"


class SlowMultiCallbackService(MultiCallbackService):
    """bamboo's multi-callback service works a while in each schedule (it sleeps 2 s there):
    callbacks arrive while an earlier one is still being handled."""

    def schedule(self, data, parent_data, callback_data=None):
        time.sleep(0.3)
        seen = data.get_one_of_outputs("seen", [])
        data.set_outputs("seen", [*seen, (callback_data or {}).get("n")])
        return super().schedule(data, parent_data, callback_data)


class AtomSlowMultiCallbackComponent(Component):
    name = "slow multi callback component"
    code = "atom_slow_multi_callback_node"
    bound_service = SlowMultiCallbackService
    form = "index.html"
