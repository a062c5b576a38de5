"""Parallel, exclusive, conditional-parallel and converge gateways."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from culm.core import data as cdata
from culm.core import rendering
from culm.core.outcomes import SLEEP, Invoke, Next, Outcome
from culm.core.records import EXECUTE, ProcessRecord, TaskRecord, new_id, now
from culm.core.run import Run
from culm.core.settings import GATEWAY_STRATEGY_FIRST
from culm.data import boolrule, template
from culm.errors import CulmError, ExpressionError
from culm.model.compiled import Condition


def converge(run: Run) -> Outcome:
    """Branches of the same process simply pass through; joins happen in the process model."""
    run.finish()
    return Next(run.node.target)  # type: ignore[arg-type]


def parallel(run: Run) -> Outcome:
    """Fork one child process per outgoing branch; the parent waits for all of them."""
    run.finish(announce=False)
    fork(run, list(run.node.targets), run.node.converge_gateway_id)
    return SLEEP


def exclusive(run: Run) -> Outcome:
    """Take the single branch whose condition holds (or the default branch)."""
    return _decide(run, _first_only(run), _take_one)


def _first_only(run: Run) -> bool:
    """Whether an exclusive gateway stops at its first true condition: the gateway's own
    ``extra_info["strategy"]`` ("FIRST" or "ONLY", bamboo's strategy names), else the engine's
    setting. bamboo reads the same override but compares the name with the setting's number, so
    there it never takes effect (spec 4.6, a defect not copied)."""
    extra_info = run.node.raw.get("extra_info")
    strategy = extra_info.get("strategy") if isinstance(extra_info, dict) else None
    if strategy in ("FIRST", "ONLY"):
        return bool(strategy == "FIRST")
    return run.engine.settings.gateway_strategy == GATEWAY_STRATEGY_FIRST


def conditional_parallel(run: Run) -> Outcome:
    """Fork a child for every branch whose condition holds (or the default branch alone)."""
    return _decide(run, False, _take_all)


def _take_one(run: Run, hits: list[Condition]) -> Outcome:
    if len(hits) > 1:
        _fail(run, f"multiple conditions meet: {[c.evaluate for c in hits]}")
        return SLEEP
    run.finish()
    return Next(hits[0].target_id)


def _take_all(run: Run, hits: list[Condition]) -> Outcome:
    run.finish(announce=False)
    fork(run, [c.target_id for c in hits], run.node.converge_gateway_id)
    return SLEEP


def _fail(run: Run, ex_data: str) -> None:
    # bamboo records a failed gateway's outputs as ``{"ex_data": ...}`` alone: a gateway has no
    # ``_result`` or loop counters of its own to report, and code reading them expects this shape.
    run.fail(ex_data, outputs={})


def _decide(run: Run, first_only: bool, take: Callable[[Run, list[Condition]], Outcome]) -> Outcome:
    """Evaluate the conditions here when that is quick, else on the user-code pool (lazy variables
    and a custom expression function are user code; see :mod:`culm.core.rendering`), then ``take``
    the branches that hold."""
    conds = run.node.conditions
    gathered = cdata.gather_conditions([c.evaluate for c in conds], run.fetch_from(run.top_pipeline_id))
    func = run.engine.settings.expr_func
    extra_info = run.node.raw.get("extra_info") or {}
    how = _How(first_only, func, extra_info, rendering.nested_objects(run))

    def judge(lazy: cdata.LazyResolver) -> list[Condition] | str:
        return _judge(conds, gathered, lazy, how)

    def resume(run: Run, verdict: Any) -> Outcome:
        if isinstance(verdict, BaseException):  # escaped the guards of _judge
            verdict = f"gateway conditions failed: {verdict!r}"
        if isinstance(verdict, str):
            _fail(run, verdict)
            return SLEEP
        hits = _or_default(run, verdict)
        return SLEEP if hits is None else take(run, hits)

    if not gathered.lazy and func is None:
        with template.time_bound(rendering.INLINE_RENDER_SECONDS) as deadline:
            verdict = judge(run.lazy_resolver())
        if isinstance(verdict, list) or template.render_clock() < deadline:  # decided, not out of time
            return resume(run, verdict)
    lazy = run.detached_lazy_resolver(run.root_data())
    return Invoke(lambda: judge(lazy), resume)


@dataclass(frozen=True, slots=True)
class _How:
    """How a gateway judges its conditions: the engine's settings and the node's ``extra_info``."""

    first_only: bool
    func: Callable[..., bool] | None
    extra_info: dict[str, Any]
    nested_objects: bool


def _judge(
    conds: tuple[Condition, ...] | list[Condition], gathered: cdata.GatheredInputs, lazy: cdata.LazyResolver,
    how: _How,
) -> list[Condition] | str:
    """The conditions that hold, in stored order, or why evaluating them failed; no storage access."""
    with template.output_bound(template.MAX_NODE_RENDER_OUTPUT):  # one budget for every condition
        return _judge_bounded(conds, gathered, lazy, how)


def _judge_bounded(
    conds: tuple[Condition, ...] | list[Condition], gathered: cdata.GatheredInputs, lazy: cdata.LazyResolver,
    how: _How,
) -> list[Condition] | str:
    try:
        namespace = cdata.condition_namespace(gathered, lazy)
    except CulmError as exc:
        return f"gateway conditions hydrate failed: {exc}"
    hits = []
    for cond in conds:
        try:
            ok = _holds(cond, namespace, how)
        except ExpressionError as exc:
            return f"evaluate condition of flow {cond.flow_id} failed: {cond.evaluate!r}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a custom expression function may raise anything
            return f"evaluate condition of flow {cond.flow_id} failed: {cond.evaluate!r}: {exc!r}"
        if ok:
            hits.append(cond)
            if how.first_only:
                break
    return hits


def _or_default(run: Run, hits: list[Condition]) -> list[Condition] | None:
    """The branches taken: the hits, else the default branch; None when the node failed, which
    parks the process."""
    if hits:
        return hits
    if run.node.default is None:
        _fail(run, "all conditions of branches are not meet")
        return None
    return [run.node.default]


def _holds(cond: Condition, namespace: dict[str, Any], how: _How) -> bool:
    # bamboo renders a condition as it renders an input, so ENABLE_RENDER_OBJ_BY_MAKO_STRING also
    # hands a sole ${d['k'][0]} fragment's object to the expression function.
    if how.func is None:
        return boolrule.evaluate_gateway_condition(cond.evaluate, namespace, how.nested_objects)
    rendered = template.render(cond.evaluate, namespace, nested_objects=how.nested_objects)
    return bool(how.func(rendered, namespace, extra_info=how.extra_info))


def fork(run: Run, targets: list[str], destination: str | None) -> None:
    """Start one child process per target; each dies at ``destination`` and acks the parent."""
    proc = run.proc
    children = [
        ProcessRecord(new_id(), proc.root_id, proc.id, target, destination, list(proc.stack),
                      priority=proc.priority, queue=proc.queue)
        for target in targets
    ]
    run.unit.insert_processes(children)
    run.unit.update_process(proc.id, need_ack=len(children), ack_num=0)
    run.step.add_tasks(
        [TaskRecord(new_id(), EXECUTE, c.id, c.current_node_id, c.root_id, due=now(), priority=c.priority,
                    queue=c.queue) for c in children]
    )
