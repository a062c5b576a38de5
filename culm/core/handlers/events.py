"""Start and end events (empty and executable)."""

from __future__ import annotations

import traceback
from typing import Any

from culm.core import data as cdata
from culm.core import rendering, states
from culm.core.outcomes import DIE, SLEEP, Invoke, Next, Outcome
from culm.core.records import CODE_RAN, COPY_REFUSED, ContextValue, StateRecord, now
from culm.core.run import Run, stored_state
from culm.errors import StoredBytesBudgetError, UnstorableValueError
from culm.model import compiled as g

# CODE_RAN: kept in an executable end event's outputs (with the run's version) from the commit of
# its code's result until the pipeline ends, when the walk goes on in a later step: parked on a
# pause, or once the pipeline's outputs have rendered on the pool, or failed after its code ran
# (the pipeline's outputs refused: unrenderable, unstorable, or their copy into the parent past the
# budget). The walk entering the end event again (a resume, a replay after a crash, a retry, which
# carries the marker to its new version: commands.retry_node) then only ends the pipeline: the code
# ran for this run, never twice. COPY_REFUSED: in the outputs of an end event whose subprocess's
# outputs could not be copied into the parent: the one kind of end event skip_node takes (a retry
# would repeat the refusal while the copy is as big). Neither is shown (records.public_outputs).
COPY_REFUSED_HINT = ("skip the end event {node} to finish the subprocess without copying its outputs "
                     "into the parent (culm skip {node}), retry it once the budget allows the copy, or revoke the pipeline")


def start(run: Run) -> Outcome:
    """Freeze ``pre_render_keys`` if the pipeline declares them, then move on (resolving them is
    rendering: here when quick, else on the user-code pool, see :mod:`culm.core.rendering`)."""
    spec = run.graph.pipelines[run.node.pipeline_id]
    if not spec.pre_render_keys:
        return _started(run, {})
    gathered = cdata.gather_keys(spec.pre_render_keys, run.fetch_from(spec.id))
    return rendering.resolve_then(run, gathered, lambda lazy: cdata.resolved_keys(gathered, lazy, rendering.nested_objects(run)), _started)


def _started(run: Run, values: Any) -> Outcome:
    if not isinstance(values, dict):
        run.fail_node(f"pre_render_keys hydrate failed: {_error(values)}")
        return SLEEP
    spec = run.graph.pipelines[run.node.pipeline_id]
    run.upsert_context(spec.id, [ContextValue(k, "plain", v) for k, v in values.items()])
    run.finish()
    return Next(run.node.target)  # type: ignore[arg-type]


def end(run: Run) -> Outcome:
    """Collect the pipeline's outputs and finish it (or return to the parent pipeline)."""
    pipeline_id = run.top_pipeline_id
    spec = run.graph.pipelines[pipeline_id]
    if not spec.outputs:
        return _ended(run, {})
    gathered = cdata.gather_keys(spec.outputs, run.fetch_from(pipeline_id))
    return rendering.resolve_then(run, gathered, lambda lazy: cdata.resolved_keys(gathered, lazy, rendering.nested_objects(run)), _ended)


def _ended(run: Run, resolved: Any) -> Outcome:
    if not isinstance(resolved, dict):
        run.fail(f"pipeline outputs hydrate failed: {_error(resolved)}", outputs=_ran(run))
        return SLEEP
    pipeline_id = run.top_pipeline_id
    spec = run.graph.pipelines[pipeline_id]
    outputs: dict[str, Any] = {k: resolved.get(k, k) for k in spec.outputs}
    # Held (a shared row lock on a server database) from the first read of it in this transaction
    # (walker._enter holds the stack; a walk resumed after end-event code or rendering holds it
    # here): a pause committing after that read waits for our commit, and the finishing write
    # below has a known outcome, so it waits for the commit too instead of a read of its own.
    holder = run.unit.hold_states([pipeline_id]).get(pipeline_id)
    if holder is not None and holder.name == states.SUSPENDED:
        # Paused while user code or rendering ran (the walk parks on a paused stack at every node
        # it enters): the pipeline cannot finish while paused, and no one would wake a process
        # that slept here. Park on the pause; resuming enters the end event again, which then
        # only finishes: an executable end event's code ran already and must not run twice.
        run.proc.suspended, run.proc.suspended_by = True, pipeline_id
        _code_ran(run, True)
        return SLEEP
    sub_state = stored_state(run.unit, pipeline_id) if pipeline_id != run.root_id else None
    if sub_state is not None:
        outputs["_loop"], outputs["_inner_loop"] = sub_state.loop, sub_state.inner_loop
    try:  # the store encodes them (and checks them against the budget) before it writes anything
        run.unit.set_execution_outputs(pipeline_id, outputs, checked=True)
    except UnstorableValueError as exc:
        # each output fits, together they may not (two of 4 MB), or not in what the pipeline may
        # store (StoredBytesBudgetError): fail here, naming them, instead of an engine error
        run.fail(f"pipeline {pipeline_id}: its outputs {list(spec.outputs)} could not be stored together: {exc}",
                 outputs=_ran(run))  # ex_data alone (clipped as every failure text), as for a hydrate failure
        return SLEEP
    if sub_state is not None and not _copied_to_parent(run, pipeline_id, outputs):
        return SLEEP
    _code_ran(run, False)
    run.finish()
    if sub_state is None:
        return _finish_root(run)
    return _finish_subprocess(run, sub_state, outputs)


def _error(res: Any) -> str:
    return res.error if isinstance(res, rendering.RenderFailed) else repr(res)


def _finish_root(run: Run) -> Outcome:
    unit = run.unit
    root = stored_state(unit, run.root_id)
    if run.step.set_state(root, states.FINISHED, {"archived_time": now()}, expect=(states.RUNNING,)):
        run.step.event("pipeline_finish", pipeline_id=run.root_id)
    return DIE


def _finish_subprocess(run: Run, sub_state: StateRecord, outputs: dict[str, Any]) -> Outcome:
    pipeline_id = sub_state.node_id
    if not run.step.set_state(sub_state, states.FINISHED, {"archived_time": now()}, expect=(states.RUNNING,)):
        return SLEEP
    run.proc.stack = run.proc.stack[:-1]
    return Next(run.graph.node(pipeline_id).target)  # type: ignore[arg-type]


def _copied_to_parent(run: Run, pipeline_id: str, outputs: dict[str, Any]) -> bool:
    """Copy subprocess ``pipeline_id``'s outputs into the parent's context variables the tree maps
    them to (before its end finishes, so that a refusal leaves the subprocess running), checked
    against the budget past STORED_BYTES_CHECK_AT bytes: the tree may map one output to any number
    of variables. Refused: the end event fails naming the budget and False. A retry repeats the
    refusal while the copy is as big, so the end event is marked COPY_REFUSED with this run's
    version: skip_node takes such an end event (and only such one) while that run's failure is its
    current one, which finishes the subprocess without the copy. A later run of it (a retry whose
    end code raised) keeps the old outputs, marker included, under a new version: not skipped."""
    mapped = cdata.mapped_outputs(run.graph, run.graph.node(pipeline_id), outputs)
    try:
        run.upsert_context(run.proc.stack[-2], mapped, checked=True)
    except StoredBytesBudgetError as exc:
        run.fail(f"pipeline {pipeline_id}: its outputs could not be copied to the context variables "
                 f"{[v.key for v in mapped]} of pipeline {run.proc.stack[-2]} ({exc}); "
                 f"{COPY_REFUSED_HINT.format(node=run.node.id)}", outputs={**_ran(run), COPY_REFUSED: run.state.version})
        return False
    return True


def _ran(run: Run) -> dict[str, Any]:
    """The outputs a failure of end event ``run.node`` keeps once its code ran for this run (an
    executable end event's CODE_RAN), so that a retry only ends the pipeline: none for an empty one."""
    return {CODE_RAN: run.state.version} if run.node.type == g.EXECUTABLE_END else {}


def _outputs(run: Run) -> dict[str, Any]:
    data = run.unit.get_execution_data(run.node.id)
    return dict(data[1]) if data else {}


def executable_end(run: Run) -> Outcome:
    """Run the user's end-event code outside the transaction, then end like an empty end event
    (only end, if the code ran for this run already: CODE_RAN)."""
    from culm.components import events as plugins

    if _outputs(run).get(CODE_RAN) == run.state.version:
        return end(run)

    code = run.node.end_code or ""
    stack = list(run.proc.stack)
    root_id = run.root_id

    def call() -> str | None:
        try:
            impl = plugins.library.get(code)
            impl().execute(in_subprocess=len(stack) > 1, root_pipeline_id=root_id, current_pipeline_id=stack[-1])
        except Exception:  # noqa: BLE001 - user code: its failure fails the end event
            return traceback.format_exc()
        return None

    def resume(run: Run, ex_data: Any) -> Outcome:
        if isinstance(ex_data, BaseException):
            ex_data = "".join(traceback.format_exception(ex_data))
        if ex_data:
            run.fail_node(ex_data)
            return SLEEP
        outcome = end(run)
        if isinstance(outcome, Invoke):  # the outputs render on the pool first
            _code_ran(run, True)
        return outcome

    return Invoke(call, resume)


def _code_ran(run: Run, ran: bool) -> None:
    """Mark (``ran``) or unmark an executable end event's run as one whose code ran (CODE_RAN)."""
    if run.node.type != g.EXECUTABLE_END:
        return
    outputs = _outputs(run)
    if ran and outputs.get(CODE_RAN) != run.state.version:
        run.unit.set_execution_outputs(run.node.id, {**outputs, CODE_RAN: run.state.version})
    elif not ran and CODE_RAN in outputs:
        del outputs[CODE_RAN]
        run.unit.set_execution_outputs(run.node.id, outputs)
