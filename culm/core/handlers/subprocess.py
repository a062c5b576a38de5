"""SubProcess: render params in the parent context and step into the child pipeline."""

from __future__ import annotations

from culm.core import data as cdata
from culm.core.outcomes import SLEEP, Next, Outcome
from culm.core.records import ContextValue
from culm.core.run import Run
from culm.errors import CulmError


def enter(run: Run) -> Outcome:
    """Push the subprocess onto the process's pipeline stack and continue at its start event."""
    node = run.node
    run.unit.reset_inner_loops(node.id)
    raw = run.raw_inputs()
    run.seed_loop_outputs(run.top_pipeline_id)
    try:
        params = cdata.render_inputs(raw, run.fetch_from(run.top_pipeline_id), run.lazy_resolver())
    except CulmError as exc:
        run.fail_node(f"subprocess params hydrate failed: {exc}")
        return SLEEP
    run.unit.set_execution_data(node.id, params, {})
    run.upsert_context(node.id, [ContextValue(k, "plain", v) for k, v in params.items()])
    run.proc.stack = [*run.proc.stack, node.id]
    return Next(run.graph.pipelines[node.id].start_event_id)
