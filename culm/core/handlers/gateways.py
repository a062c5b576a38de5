"""Parallel, exclusive, conditional-parallel and converge gateways."""

from __future__ import annotations

from culm.core import data as cdata
from culm.core.engine import GATEWAY_STRATEGY_FIRST
from culm.core.outcomes import SLEEP, Next, Outcome
from culm.core.records import EXECUTE, ProcessRecord, TaskRecord, new_id, now
from culm.core.run import Run
from culm.errors import CulmError, ExpressionError
from culm.model.compiled import Condition


def converge(run: Run) -> Outcome:
    """Branches of the same process simply pass through; joins happen in the process model."""
    run.finish()
    return Next(run.node.target)  # type: ignore[arg-type]


def parallel(run: Run) -> Outcome:
    """Fork one child process per outgoing branch; the parent waits for all of them."""
    run.finish()
    fork(run, list(run.node.targets), run.node.converge_gateway_id)
    return SLEEP


def exclusive(run: Run) -> Outcome:
    """Take the single branch whose condition holds (or the default branch)."""
    first_only = run.engine.settings.gateway_strategy == GATEWAY_STRATEGY_FIRST
    hits = _or_default(run, _evaluate(run, first_only=first_only))
    if hits is None:
        return SLEEP
    if len(hits) > 1:
        _fail(run, f"multiple conditions meet: {[c.evaluate for c in hits]}")
        return SLEEP
    run.finish()
    return Next(hits[0].target_id)


def _fail(run: Run, ex_data: str) -> None:
    # bamboo records a failed gateway's outputs as ``{"ex_data": ...}`` alone: a gateway has no
    # ``_result`` or loop counters of its own to report, and code reading them expects this shape.
    run.fail(ex_data, outputs={})


def _or_default(run: Run, hits: list[Condition] | None) -> list[Condition] | None:
    """The branches taken: the hits, else the default branch; None when the node failed (or could
    not evaluate), which parks the process."""
    if hits is None or hits:
        return hits
    if run.node.default is None:
        _fail(run, "all conditions of branches are not meet")
        return None
    return [run.node.default]


def conditional_parallel(run: Run) -> Outcome:
    """Fork a child for every branch whose condition holds (or the default branch alone)."""
    hits = _or_default(run, _evaluate(run, first_only=False))
    if hits is None:
        return SLEEP
    run.finish()
    fork(run, [c.target_id for c in hits], run.node.converge_gateway_id)
    return SLEEP


def _evaluate(run: Run, *, first_only: bool) -> list[Condition] | None:
    """Conditions that hold, in stored order; None when evaluation failed the node."""
    conds = run.node.conditions
    try:
        namespace = cdata.condition_namespace([c.evaluate for c in conds], run.fetch_from(run.top_pipeline_id),
                                              run.lazy_resolver())
    except CulmError as exc:
        _fail(run, f"gateway conditions hydrate failed: {exc}")
        return None
    hits = []
    for cond in conds:
        try:
            ok = _holds(run, cond, namespace)
        except ExpressionError as exc:
            _fail(run, f"evaluate condition of flow {cond.flow_id} failed: {cond.evaluate!r}: {exc}")
            return None
        except Exception as exc:  # noqa: BLE001 - a custom expression function may raise anything
            _fail(run, f"evaluate condition of flow {cond.flow_id} failed: {cond.evaluate!r}: {exc!r}")
            return None
        if ok:
            hits.append(cond)
            if first_only:
                break
    return hits


def _holds(run: Run, cond: Condition, namespace: dict) -> bool:
    from culm.data import boolrule, template

    func = run.engine.settings.expr_func
    if func is None:
        return boolrule.evaluate_gateway_condition(cond.evaluate, namespace)
    rendered = template.render(cond.evaluate, namespace)
    return bool(func(rendered, namespace, extra_info=run.node.raw.get("extra_info") or {}))


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
