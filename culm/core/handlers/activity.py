"""ServiceActivity: render inputs, run the component, then finish, wait for schedules or fail."""

from __future__ import annotations

import traceback
from dataclasses import replace
from typing import Any

from culm._printable import engine_logger
from culm.core import data as cdata
from culm.core import deadlines, rendering, signals, states
from culm.core.outcomes import SLEEP, Invoke, Next, Outcome
from culm.core.ports import LogRow
from culm.core.records import SCHEDULE, ContextValue, ProcessRecord, ScheduleRecord, TaskRecord, new_id, now
from culm.core.run import Run
from culm.core.service_call import CallResult, ServiceCall, finishes, moves_on
from culm.errors import CulmError, StoredBytesBudgetError, UnstorableValueError
from culm.model.limits import clip_log_line

logger = engine_logger("culm.engine")


def execute(run: Run) -> Outcome:
    """Prepare the component call; the call itself runs outside the transaction.

    Inputs are rendered here when that is quick, else with the call on the user-code pool
    (:mod:`culm.core.rendering`); the stored variables they need are read here.
    """
    if run.node.timeout is not None:
        deadlines.arm(run)
    raw = run.raw_inputs()
    run.seed_loop_outputs(run.top_pipeline_id)
    gathered = cdata.gather_inputs(raw, run.fetch_from(run.top_pipeline_id))
    st = run.state
    try:
        inputs = rendering.render_inline(run, gathered)
    except CulmError as exc:
        run.fail(f"inputs hydrate failed: {exc}", inputs=rendering.raw_values(raw))
        return SLEEP
    if inputs is not None:
        inputs["_loop"], inputs["_inner_loop"] = st.loop, st.inner_loop
        return Invoke(make_call(run, inputs, {}).execute, after_execute)
    call = make_call(run, {}, {})
    render = rendering.render_later(run, gathered, raw, call.root_data)

    def render_and_execute() -> CallResult | rendering.RenderFailed:
        rendered = render()
        if isinstance(rendered, rendering.RenderFailed):
            return rendered
        rendered["_loop"], rendered["_inner_loop"] = st.loop, st.inner_loop
        call.inputs = rendered
        return call.execute()

    return Invoke(render_and_execute, after_execute)


def make_call(run: Run, inputs: dict[str, Any], outputs: dict[str, Any]) -> ServiceCall:
    node, st = run.node, run.state
    cfg = node.loop_config or {}
    return ServiceCall(
        code=node.code, version=node.version, node_id=node.id, state_version=st.version, root_id=run.graph.root_id,
        top_pipeline_id=run.proc.stack[-1], loop=st.loop, inner_loop=st.inner_loop, inputs=inputs,
        outputs=outputs, root_data=run.root_data(), error_ignorable=node.error_ignorable,
        fail_skip=bool(cfg.get("fail_skip")), loop_left=_loop_times(run) - st.inner_loop if cfg else 0,
    )


def _loop_times(run: Run) -> int:
    """How many iterations the node loop runs in all (update_node_loop_times may have changed the
    configured count since the run started)."""
    times_key = cdata.loop_times_key(run.node.id)
    times = run.unit.get_context(run.top_pipeline_id, [times_key]).get(times_key)
    return int(times.value if times is not None else (run.node.loop_config or {}).get("loop_times") or 0)


def as_result(res: Any, inputs: dict[str, Any]) -> CallResult:
    """Turn an escaped exception into a failed call result."""
    if isinstance(res, CallResult):
        return res
    text = "".join(traceback.format_exception(res)) if isinstance(res, BaseException) else str(res)
    return CallResult(False, inputs, {}, ex_data=text)


def record_call(run: Run, res: CallResult, *, repeated: bool = False) -> tuple[CallResult, dict[str, Any]]:
    """Store a call's logs and execution data and queue its events.

    A log line with what no backend can hold (a NUL, a lone surrogate) was escaped when it was
    logged (:func:`culm.model.limits.clip_log_line`) and changes nothing. A part of the result the
    store cannot hold all the same (an output no serialiser takes) is left out, or kept escaped
    for a log line, and the call counts as failed with
    ``ex_data`` naming that part: the component ran once and its node fails visibly, instead of
    a write that fails at every attempt (and the component run again after each one).

    Its log lines are checked against the stored-bytes budget past STORED_BYTES_CHECK_AT bytes,
    or whatever their size when ``repeated`` (a schedule call: a node polling for ever logged
    past any budget); past it :data:`LOGS_PAST_BUDGET` is kept in their place, once: not again
    while it is the last line the node's run stored (see :func:`_past_budget`).

    Returns:
        The result as recorded (``res``, or a failed copy of it) and its outputs with the reserved
        keys (``ex_data``, ``_result``, ``_loop``, ``_inner_loop``).
    """
    unit, node_id = run.unit, run.node.id
    problems: list[str] = []
    if res.logs:
        rows = _log_rows(run, res.logs)
        try:
            unit.check_logs(node_id, sum(len(r["line"]) for r in rows), always=repeated)
        except StoredBytesBudgetError as exc:
            res = replace(res, logs=_past_budget(run, res.logs[-1][0], exc))
        try:
            if res.logs:
                unit.add_logs(_log_rows(run, res.logs))
        except UnstorableValueError as exc:
            bad = set(exc.keys)
            unit.add_logs(_log_rows(run, [(t, repr(line) if i in bad else line) for i, (t, line) in enumerate(res.logs)]))
            problems.append(f"{exc} (kept escaped)")
    called, inputs, plain = res, dict(res.inputs), dict(res.outputs)
    for _ in range(3):  # at worst: some inputs left out, then some outputs, then it is stored
        if problems:
            res = _refused(called, problems)
        outputs = _reserved(run, res, plain)
        try:
            unit.set_execution_data(node_id, inputs, outputs)
            break
        except UnstorableValueError as exc:
            part = inputs if exc.field == "inputs" else plain
            for key in exc.keys or list(part):  # no key alone at fault: the whole part goes
                part.pop(key, None)
            problems.append(f"{exc} (left out)")
    else:
        raise UnstorableValueError(f"the result of node {node_id} could not be stored: {'; '.join(problems)}")
    if res.events and signals.pipeline_event.has_receivers:
        for event_type, data in res.events:
            run.step.event(event_type, **data)
    return res, outputs


# Kept in place of a call's log lines past the stored-bytes budget. Short and fixed: quoting the
# budget error at every poll of a node at its budget stored ~300 bytes a poll, unchecked (600 polls
# at a 3,000-byte budget stored 163,455 bytes); the error goes to the process log instead.
LOGS_PAST_BUDGET = "[culm: log lines not kept: pipeline over its stored-bytes budget]"


def _past_budget(run: Run, at: float, exc: StoredBytesBudgetError) -> list[tuple[float, str]]:
    """The lines to keep for a call whose own were refused past the budget: the note, unless it is
    already the last line of this node's run (a node polling at its budget stores it once, and
    then nothing, until some lines of its are kept again). One read of the run's last line, on
    this path only."""
    if run.unit.last_logs(run.node.id, run.state.version, 0, 1) == [LOGS_PAST_BUDGET]:
        return []
    logger.warning("log lines of node %s not kept: %s", run.node.id, exc)
    return [(at, LOGS_PAST_BUDGET)]


def _log_rows(run: Run, logs: list[tuple[float, str]]) -> list[LogRow]:
    st = run.state
    return [{"node_id": run.node.id, "version": st.version, "loop": st.loop, "created_time": t,
             "line": clip_log_line(line)} for t, line in logs]


def _refused(res: CallResult, problems: list[str]) -> CallResult:
    """``res`` as a failed call whose ``ex_data`` says what of it the store could not hold."""
    said = "; ".join(problems)
    ex_data = f"the result could not be stored: {said}"
    if res.ex_data:
        ex_data = f"{res.ex_data}\n{ex_data}"
    return CallResult(False, res.inputs, res.outputs, ex_data=ex_data, schedule_type=res.schedule_type,
                      logs=res.logs, events=res.events, loop_left=res.loop_left)


def _reserved(run: Run, res: CallResult, plain: dict[str, Any]) -> dict[str, Any]:
    outputs = dict(plain)
    if res.ex_data is not None:
        outputs["ex_data"] = res.ex_data
    # bamboo keeps what the component returned ("done", 0); a result failed by culm itself (a
    # value the store refused) or without a return value of its own is the bool.
    returned = res.returned
    outputs["_result"] = returned if returned is not None and bool(returned) == res.ok else res.ok
    outputs["_loop"], outputs["_inner_loop"] = run.state.loop, run.state.inner_loop
    return outputs


def after_execute(run: Run, res: Any) -> Outcome:
    """Apply an execute call's result (in the transaction after the call)."""
    if isinstance(res, rendering.RenderFailed):
        run.fail(f"inputs hydrate failed: {res.error}", inputs=res.raw_inputs)
        return SLEEP
    res, outputs = record_call(run, as_result(res, {}))
    if res.ok and res.need_schedule:
        start_schedule(run, res.schedule_type or "callback")
        return SLEEP
    return settle(run, res.ok, outputs, loop_left=res.loop_left)


def settle(run: Run, ok: bool, outputs: dict[str, Any], *, scheduled: bool = False,
           loop_left: int | None = None) -> Outcome:
    """Finish the node (maybe with an ignored error) and move on, or fail it; ``scheduled``: after
    its schedule phase, where bamboo sends ``node_finish`` even for a node loop going round again
    (after ``execute`` it sends it only when the node moves on). ``loop_left``: the loop's
    iterations after this one as the call saw them (CallResult.loop_left), so that the node's
    hooks and the engine decide alike; None: as the context holds the count now."""
    node = run.node
    if node.timeout is not None:
        deadlines.disarm(run)
    cfg = node.loop_config  # (properties of the node's raw dict: read once, every activity settles)
    mapped, loop_times = _outputs_to_context(run, ok, outputs, cfg)
    if cfg and not _kept_loop_outputs(run, mapped, outputs, ok):
        return SLEEP
    if not cfg and not _copied_outputs(run, mapped, outputs, ok):
        return SLEEP
    fail_skip = bool(cfg.get("fail_skip")) if cfg else False
    ignorable = node.error_ignorable
    if finishes(ok, ignorable, fail_skip):
        left = loop_times - run.state.inner_loop if loop_left is None else loop_left
        again = not moves_on(ok, ignorable, fail_skip, left)
        run.finish(error_ignored=not ok, announce=scheduled or not again)
        return Next(node.id if again else node.target)  # type: ignore[arg-type]
    run.set_state(states.FAILED, {"archived_time": now()}, expect=(states.RUNNING,))
    return SLEEP


def _own_failure(outputs: dict[str, Any], ok: bool) -> str:
    """What a refusal to copy or keep outputs adds to its text when the component failed itself
    (``ok`` False): its own ``ex_data``, which the refusal's text replaces in the outputs."""
    own = outputs.get("ex_data")
    return "" if ok or own in (None, "") else f"; the component's own failure: {own}"


def _copied_outputs(run: Run, mapped: list[ContextValue], outputs: dict[str, Any], ok: bool) -> bool:
    """Copy the node's outputs into the context variables the tree maps them to, checked against
    the pipeline's budget past STORED_BYTES_CHECK_AT bytes (the tree may map one output to many
    variables: 40 copies of a 1 MB output stored 40 MB past a 20 MB budget, unchecked, until
    session 19); past it, fail the node naming the budget and return False (nothing copied)."""
    try:
        run.upsert_context(run.top_pipeline_id, mapped, checked=True)
    except StoredBytesBudgetError as exc:
        run.fail(f"node {run.node.id}: its outputs could not be copied to the context variables "
                 f"{[v.key for v in mapped]} ({exc}){_own_failure(outputs, ok)}", outputs={**outputs, "_result": False})
        return False
    return True


def _kept_loop_outputs(run: Run, mapped: list[ContextValue], outputs: dict[str, Any], ok: bool) -> bool:
    """Store the list a node loop collects its iterations' outputs in; when it grew past what the
    store holds, fail the node saying so (the list stays as the iterations before left it) and
    return False. The store encodes the value before writing anything, so nothing is half done."""
    try:
        run.upsert_context(run.top_pipeline_id, mapped, checked=True)
    except UnstorableValueError as exc:
        st = run.state
        run.fail(f"node {run.node.id}: the outputs of its loop iterations could not be kept in context variable "
                 f"{mapped[0].key!r} at iteration {st.inner_loop} ({exc}); it holds those of the iterations "
                 f"before{_own_failure(outputs, ok)}", outputs={**outputs, "_result": False})
        return False
    return True


def _outputs_to_context(
    run: Run, ok: bool, outputs: dict[str, Any], cfg: dict[str, Any] | None
) -> tuple[list[ContextValue], int]:
    """The context values ``outputs`` produce, and how many iterations the node loop runs in all
    (0 without a loop; ``cfg``: the node's ``loop_config``). A loop node appends one entry per
    iteration to its ``outputs_key`` list."""
    if not cfg:
        return cdata.mapped_outputs(run.graph, run.node, outputs), 0
    key = cfg.get("outputs_key") or "outputs"
    # update_node_loop_times may have changed the configured count since the run started.
    times_key = cdata.loop_times_key(run.node.id)
    stored = run.unit.get_context(run.top_pipeline_id, [key, times_key])
    current, times = stored.get(key), stored.get(times_key)
    items = list(current.value) if current is not None and isinstance(current.value, list) else []
    if run.state.inner_loop <= 1:
        items = []
    entry = dict(outputs.get("outputs") or {}) if isinstance(outputs.get("outputs"), dict) else {}
    entry.update(result=outputs.get("_result", ok), inner_loop=run.state.inner_loop)
    items.append(entry)
    loop_times = int(times.value if times is not None else cfg.get("loop_times") or 0)
    return [ContextValue(key, "plain", items)], loop_times


def start_schedule(run: Run, schedule_type: str) -> None:
    """Create the schedule of this run; a poll starts at once, callbacks wait for ``callback()``."""
    sched = ScheduleRecord(new_id(), run.node.id, run.state.version, run.proc.id, schedule_type)
    run.unit.insert_schedule(sched)
    run.step.note(run.state)  # the node stays RUNNING: the feed's readers learn of its schedule (state_tree.Tree)
    if schedule_type == "poll":
        run.step.add_task(schedule_task(run.proc, run.node.id, sched.id, due=now()))


def schedule_task(proc: ProcessRecord, node_id: str, schedule_id: str | None, *, due: float, callback_id: str | None = None) -> TaskRecord:
    return TaskRecord(new_id(), SCHEDULE, proc.id, node_id, proc.root_id, schedule_id=schedule_id,
                      callback_id=callback_id, due=due, priority=proc.priority, queue=proc.queue)
