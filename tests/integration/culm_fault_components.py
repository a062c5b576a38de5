"""Components for the fault-injection tests (``test_faults.py``).

The workers started by ``test_faults.py`` import this module through ``CULM_IMPORTS``. Executions
are recorded in ``$CULM_TEST_EXEC_LOG`` with :func:`culm_dist_components.record`, so
``DistributedBackend.executions`` counts them.
"""

from __future__ import annotations

from culm_dist_components import record

from culm.components import Component, Service, StaticIntervalGenerator


class IntervalPollService(Service):
    """Polls ``polls`` times (input, default 5) one second apart, counting each poll in ``outputs.polls``."""

    __need_schedule__ = True
    interval = StaticIntervalGenerator(1)

    def execute(self, data, parent_data):
        record("execute", self.id)
        data.set_outputs("polls", 0)
        return True

    def schedule(self, data, parent_data, callback_data=None):
        record("poll", self.id)
        polls = int(data.get_one_of_outputs("polls", 0) or 0) + 1
        data.set_outputs("polls", polls)
        if polls >= int(data.get_one_of_inputs("polls", 5)):
            self.finish_schedule()
        return True


class IntervalPollComponent(Component):
    code = "fault_interval_poll"
    name = "interval poll"
    bound_service = IntervalPollService
