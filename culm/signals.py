"""Signals sent after committed changes: :mod:`culm.core.signals` at the path the contract names.

The same signal objects as there: a receiver connected through either path hears every send.

Example::

    from culm.signals import pipeline_event, post_set_state, receiver

    @receiver(post_set_state)
    def on_state(sender, node_id, to_state, **kwargs):
        print(node_id, to_state)
"""

from culm.core.signals import (
    PipelineEvent,
    Signal,
    execute_interrupt,
    pipeline_event,
    post_set_state,
    pre_service_execute,
    pre_service_schedule,
    receiver,
    schedule_interrupt,
)

__all__ = ["Signal", "PipelineEvent", "post_set_state", "pipeline_event", "pre_service_execute",
           "pre_service_schedule", "execute_interrupt", "schedule_interrupt", "receiver"]
