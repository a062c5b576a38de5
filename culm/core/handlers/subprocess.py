"""SubProcess: render params in the parent context and step into the child pipeline."""

from __future__ import annotations

from typing import Any

from culm.core import data as cdata
from culm.core import rendering
from culm.core.outcomes import SLEEP, Invoke, Next, Outcome
from culm.core.records import ContextValue
from culm.core.run import Run
from culm.errors import CulmError, StoredBytesBudgetError, UnstorableValueError


def enter(run: Run) -> Outcome:
    """Push the subprocess onto the process's pipeline stack and continue at its start event.

    Its params are rendered in the parent context, here when that is quick, else on the
    user-code pool (:mod:`culm.core.rendering`), stepping in when they come back.
    """
    node = run.node
    run.unit.reset_inner_loops(node.id)
    raw = run.raw_inputs()
    run.seed_loop_outputs(run.top_pipeline_id)
    gathered = cdata.gather_inputs(raw, run.fetch_from(run.top_pipeline_id))
    try:
        params = rendering.render_inline(run, gathered)
    except CulmError as exc:
        return _failed(run, str(exc))
    if params is None:
        return Invoke(rendering.render_later(run, gathered, raw), _rendered)
    return _step_in(run, params)


def _rendered(run: Run, res: Any) -> Outcome:
    if isinstance(res, rendering.RenderFailed):
        return _failed(run, res.error)
    if not isinstance(res, dict):  # an exception escaped the render call
        return _failed(run, repr(res))
    return _step_in(run, res)


def _failed(run: Run, error: str) -> Outcome:
    # bamboo's shape for a node that is not an activity: its inputs as they were, ex_data added.
    run.fail_node(f"subprocess params hydrate failed: {error}")
    return SLEEP


def _step_in(run: Run, params: dict[str, Any]) -> Outcome:
    """Store the params as the SubProcess node's inputs and as its child's context values, both
    checked against the budget (past STORED_BYTES_CHECK_AT bytes), and step in. The copy into the
    child's context was not checked (session 20): a 1 MB param stored 2 MB where 1 MB was checked,
    past the budget by one param at every subprocess node entered near it."""
    node = run.node
    try:  # the store encodes them (and checks them) before it writes anything
        run.unit.set_execution_data(node.id, params, {})
        run.upsert_context(node.id, [ContextValue(k, "plain", v) for k, v in params.items()], checked=True)
    except StoredBytesBudgetError as exc:
        run.fail_node(f"subprocess {node.id}: its params {list(params)} could not be stored ({exc}); retry it "
                      f"(culm retry-subprocess {node.id}) once the budget allows them, or revoke the pipeline")
        return SLEEP
    except UnstorableValueError as exc:
        # each param fits, together they may not (two of 4 MB): the subprocess fails naming them
        return _failed(run, str(exc))
    run.proc.stack = [*run.proc.stack, node.id]
    # bamboo's engine sends node_finish for a subprocess node as its process moves on into it
    # (the node itself stays RUNNING), not when the subprocess ends
    run.announce_finish()
    return Next(run.graph.pipelines[node.id].start_event_id)
