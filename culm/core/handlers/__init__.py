"""One handler per node type; ``execute(run)`` picks it."""

from __future__ import annotations

from collections.abc import Callable

from culm.core.handlers import activity, events, gateways, subprocess
from culm.core.outcomes import Outcome
from culm.core.run import Run
from culm.model import compiled as g

_HANDLERS: dict[str, Callable[[Run], Outcome]] = {
    g.START: events.start,
    g.END: events.end,
    g.EXECUTABLE_END: events.executable_end,
    g.ACTIVITY: activity.execute,
    g.SUBPROCESS: subprocess.enter,
    g.PARALLEL: gateways.parallel,
    g.EXCLUSIVE: gateways.exclusive,
    g.CONDITIONAL_PARALLEL: gateways.conditional_parallel,
    g.CONVERGE: gateways.converge,
}


def execute(run: Run) -> Outcome:
    """Run the handler of ``run.node``'s type."""
    return _HANDLERS[run.node.type](run)
