"""The engine API: bamboo-engine's ``bamboo_engine.api`` functions, on a culm runtime.

Every function takes the runtime first and returns an :class:`EngineAPIResult`. User errors (wrong
state, unknown id, bad argument, invalid tree) come back as ``result=False`` with a message saying
what is wrong and where; nothing raises.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any, ParamSpec

from culm._printable import engine_logger
from culm._retry import retrying
from culm.core import commands, prepare, queries
from culm.errors import CulmError, InvalidOperationError, NotFoundError
from culm.model import limits

logger = engine_logger("culm.api")

P = ParamSpec("P")


class EngineAPIResult:
    """The envelope every API function returns."""

    __slots__ = ("result", "message", "exc", "data", "exc_trace")

    def __init__(self, result: bool, message: str, exc: Exception | None = None, data: Any = None,
                 exc_trace: str | None = None) -> None:
        self.result = result
        self.message = message
        self.exc = exc
        self.data = data
        self.exc_trace = exc_trace

    def __bool__(self) -> bool:
        return self.result

    def __repr__(self) -> str:
        return f"EngineAPIResult(result={self.result}, message={self.message!r}, data={self.data!r})"


def _api(fn: Callable[P, Any]) -> Callable[P, EngineAPIResult]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> EngineAPIResult:
        runtime = args[0] if args else kwargs.get("runtime")
        if getattr(runtime, "engine", None) is None:
            exc = InvalidOperationError(f"{fn.__name__}: the first argument must be a culm.Runtime, got {runtime!r}")
            return EngineAPIResult(False, str(exc), exc)
        if getattr(runtime, "closed", False):
            # Its connections are closed (or being closed): a call would fail in the driver.
            exc = InvalidOperationError(f"{fn.__name__}: {runtime!r} is closed; open a new culm.Runtime")
            return EngineAPIResult(False, str(exc), exc)
        try:
            # One call is one transaction: a deadlock victim is run again, never a refusal.
            data = retrying(lambda: fn(*args, **kwargs), fn.__name__)
        except CulmError as exc:
            return EngineAPIResult(False, str(exc), exc, None, traceback.format_exc())
        except TypeError as exc:  # wrong arguments from the caller
            return EngineAPIResult(False, f"{fn.__name__}: {exc}", exc, None, traceback.format_exc())
        except Exception as exc:
            problem = _database_problem(runtime, exc)
            if problem is not None:  # an operator's matter, named with its fix, not a traceback
                return EngineAPIResult(False, f"{fn.__name__}: {problem}", problem, None, traceback.format_exc())
            logger.exception("%s failed", fn.__name__)
            return EngineAPIResult(False, f"{fn.__name__} failed: {type(exc).__name__}: {exc}", exc, None,
                                   traceback.format_exc())
        if isinstance(data, EngineAPIResult):
            return data
        return EngineAPIResult(True, "success", None, data)

    return wrapper


def _database_problem(runtime: Any, exc: Exception) -> CulmError | None:
    explain = getattr(runtime, "database_problem", None)
    if explain is None:
        return None
    try:
        problem = explain(exc)
    except Exception:  # noqa: BLE001 - explaining must not hide the original failure
        return None
    return problem if isinstance(problem, CulmError) else None


def _str_id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidOperationError(f"{name} must be a non-empty string, got {value!r}")
    if (problem := limits.lookup_problem(value, name)) is not None:
        raise InvalidOperationError(problem)
    return value


def _opt_dict(value: Any, name: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidOperationError(f"{name} must be a dict, got {type(value).__name__}")
    return value


# -- run ------------------------------------------------------------------------------------
@_api
def run_pipeline(
    runtime: Any,
    pipeline: dict,
    root_pipeline_data: dict | None = None,
    root_pipeline_context: dict | None = None,
    subprocess_context: dict | None = None,
    cycle_tolerate: bool = False,
    start_node_id: str | None = None,
    **options: Any,
) -> Any:
    """Validate ``pipeline`` and start it; refused if its id ran before or the tree is invalid."""
    from culm.components import events, variables
    from culm.model.compiled import compile_tree
    from culm.model.ignored import warn_ignored_timeouts
    from culm.model.tree_shape import tree_size
    from culm.model.validator import prepare_tree

    with runtime.engine.submitting():
        if not isinstance(pipeline, dict):
            raise InvalidOperationError(f"pipeline must be a dict (a pipeline tree), got {type(pipeline).__name__}")
        preset = tuple(set(ctx) if isinstance(ctx, dict) else set()
                       for ctx in (root_pipeline_context, subprocess_context))
        prepared = prepare_tree(pipeline, cycle_tolerate=bool(cycle_tolerate), lazy_exists=variables.library.has,
                                end_event_exists=events.library.has, preset=(preset[0], preset[1]))
        tree = prepared.tree
        if start_node_id is not None:
            prepared.check_start_node(start_node_id)  # the analysis above built its graphs
        graph = compile_tree(tree)
        priority = options.get("priority", 100)
        if not isinstance(priority, int) or not 0 <= priority <= 255:
            raise InvalidOperationError(f"priority must be an int from 0 to 255, got {priority!r}")
        queue = str(options.get("queue", "") or "")
        if problem := limits.column_problem(queue, limits.KEY_LENGTH):
            raise InvalidOperationError(f"queue {queue!r} {problem}")
        root_data = _opt_dict(root_pipeline_data, "root_pipeline_data")
        limits.check_payload(root_data, "root_pipeline_data")
        contexts = {name: _opt_dict(value, name) for name, value in
                    (("root_pipeline_context", root_pipeline_context), ("subprocess_context", subprocess_context))}
        for name, value in contexts.items():
            limits.check_context_keys(value, name)
        limits.check_context_count(tree_size(tree)[2], contexts["root_pipeline_context"],
                                   contexts["subprocess_context"], len(graph.pipelines) - 1)
        prepare.run_pipeline(
            runtime.engine, tree, graph, stored=prepared, root_pipeline_data=root_data,
            root_pipeline_context=contexts["root_pipeline_context"],
            subprocess_context=contexts["subprocess_context"],
            start_node_id=start_node_id, priority=priority, queue=queue,
        )
    warn_ignored_timeouts(tree)
    return None


# -- commands -------------------------------------------------------------------------------
@_api
def pause_pipeline(runtime: Any, pipeline_id: str) -> None:
    """Pause a root pipeline or a subprocess: its processes park before their next node.

    Nodes running when it returns finish; no node of the pipeline is entered after it returns
    (on every backend: an engine step entering one commits first, or sees the pause).
    """
    commands.pause_pipeline(runtime.engine, _str_id(pipeline_id, "pipeline_id"))


@_api
def resume_pipeline(runtime: Any, pipeline_id: str) -> None:
    """Resume a paused pipeline or subprocess."""
    commands.resume_pipeline(runtime.engine, _str_id(pipeline_id, "pipeline_id"))


@_api
def revoke_pipeline(runtime: Any, pipeline_id: str) -> None:
    """Revoke a pipeline for good."""
    commands.revoke_pipeline(runtime.engine, _str_id(pipeline_id, "pipeline_id"))


@_api
def pause_node_appoint(runtime: Any, node_id: str) -> None:
    """Set a breakpoint: the process stops before running ``node_id``."""
    commands.pause_node_appoint(runtime.engine, _str_id(node_id, "node_id"))


@_api
def resume_node_appoint(runtime: Any, node_id: str) -> None:
    """Remove a breakpoint and let a process parked there go on."""
    commands.resume_node_appoint(runtime.engine, _str_id(node_id, "node_id"))


@_api
def retry_node(runtime: Any, node_id: str, data: dict | None = None, loop_retry: bool = False) -> None:
    """Run a FAILED node again, optionally with new raw inputs (which replace the old ones).
    ``loop_retry``: run only the failed iteration of its node loop again (its ``loop_config`` must
    be ``retryable``), keeping the loop's counters."""
    limits.check_payload(data, f"retry data for node {node_id}")
    commands.retry_node(runtime.engine, _str_id(node_id, "node_id"), data, bool(loop_retry))


@_api
def retry_subprocess(runtime: Any, node_id: str) -> None:
    """Retry a SubProcess node that failed on entry."""
    commands.retry_subprocess(runtime.engine, _str_id(node_id, "node_id"))


@_api
def skip_node(runtime: Any, node_id: str, loop_skip: bool = False) -> None:
    """Mark a FAILED activity (or start event) FINISHED and go on after it. ``loop_skip``: skip
    only the failed iteration of its node loop (its ``loop_config`` must be ``skippable``); the
    loop goes on with its next iteration while there are any."""
    commands.skip_node(runtime.engine, _str_id(node_id, "node_id"), bool(loop_skip))


@_api
def skip_exclusive_gateway(runtime: Any, node_id: str, flow_id: str) -> None:
    """Let a FAILED exclusive gateway go on along ``flow_id``."""
    commands.skip_exclusive_gateway(runtime.engine, _str_id(node_id, "node_id"), _str_id(flow_id, "flow_id"))


@_api
def skip_conditional_parallel_gateway(runtime: Any, node_id: str, flow_ids: list, converge_gateway_id: str) -> None:
    """Let a FAILED conditional parallel gateway fork along ``flow_ids``."""
    commands.skip_conditional_parallel_gateway(
        runtime.engine, _str_id(node_id, "node_id"), flow_ids, _str_id(converge_gateway_id, "converge_gateway_id")
    )


@_api
def forced_fail_activity(runtime: Any, node_id: str, ex_data: str = "", send_post_set_state_signal: bool = True) -> None:
    """Fail a RUNNING activity now; whatever it still produces is discarded.

    ``send_post_set_state_signal=False`` (bamboo's option) keeps ``post_set_state`` quiet for it.
    """
    commands.forced_fail_activity(runtime.engine, _str_id(node_id, "node_id"), str(ex_data),
                                  signal=bool(send_post_set_state_signal))


@_api
def callback(runtime: Any, node_id: str, version: str, data: dict | None = None) -> Any:
    """Deliver a callback to a waiting activity (``version`` must be its current version)."""
    limits.check_payload(data, f"callback data for node {node_id}")
    return commands.callback(runtime.engine, _str_id(node_id, "node_id"), _str_id(version, "version"), data)


@_api
def update_context_values(runtime: Any, pipeline_id: str, context_values: dict) -> Any:
    """Overwrite existing context variables of a running pipeline (``{"${key}": value}``)."""
    limits.check_context_keys(context_values, f"context_values for pipeline {pipeline_id}")
    return commands.update_context_values(runtime.engine, _str_id(pipeline_id, "pipeline_id"), context_values)


@_api
def update_node_outputs(runtime: Any, root_pipeline_id: str, node_id: str, context_values: dict) -> list:
    """Before skipping a FAILED node whose outputs later nodes need: overwrite the root context
    values given (``{"${key}": value}``; keys that do not exist are not created) and merge
    ``{key: value}`` into the node's outputs, in one transaction (bamboo-pipeline's contrib
    ``pipeline.contrib.mock.api.update_node_outputs``). Refused unless the pipeline is RUNNING and
    the node FAILED; ``${_system}`` cannot be changed. ``data``: the context keys updated."""
    limits.check_context_keys(context_values, f"context_values for node {node_id}")
    return commands.update_node_outputs(runtime.engine, _str_id(root_pipeline_id, "root_pipeline_id"),
                                        _str_id(node_id, "node_id"), context_values)


@_api
def update_node_loop_times(runtime: Any, node_id: str, loop_times: int) -> None:
    """Change the iteration count of a node loop (``loop_config.loop_times``) of a stored run.

    The node reads it when an iteration ends: a count at or below the iterations already run ends
    the loop after the current one. bamboo offers this as a method of its runtime; so does
    :class:`culm.Runtime`, which raises where this returns a refusal.
    """
    commands.update_node_loop_times(runtime.engine, _str_id(node_id, "node_id"), loop_times)


# -- queries --------------------------------------------------------------------------------
@_api
def list_pipelines(
    runtime: Any,
    state: str | list[str] | None = None,
    name: str | None = None,
    created_after: Any = None,
    created_before: Any = None,
    limit: int = 50,
    offset: int = 0,
) -> dict:
    """Root pipelines (never subprocesses), newest first, with counts per state.

    Args:
        runtime: the runtime.
        state: one state name or a list of them (``"RUNNING"``, ``["FINISHED", "REVOKED"]``).
        name: a substring of the tree's ``name`` (case-insensitive).
        created_after: keep pipelines created at or after this timezone-aware datetime.
        created_before: keep pipelines created before this timezone-aware datetime.
        limit: page size, 0 to 1000.
        offset: pipelines to pass over before the page.

    Returns:
        ``{"total": int, "counts": {state: int}, "items": [{"id", "name", "state", "created_time",
        "started_time", "archived_time"}]}``: ``total`` counts every pipeline that matches (all
        pages), ``counts`` every state ignoring the ``state`` filter; times are timezone-aware.
    """
    from culm.core import listing

    query = listing.make_query(state, name, created_after, created_before, limit, offset)
    return listing.list_pipelines(runtime.engine, query)


@_api
def get_pipeline_tree(runtime: Any, pipeline_id: str) -> dict:
    """The tree a root pipeline was started with (names, types and flows of its nodes)."""
    from culm.core import listing

    return listing.pipeline_tree(runtime.engine, _str_id(pipeline_id, "pipeline_id"))


@_api
def get_pipeline_states(runtime: Any, root_id: str, flat_children: bool = True) -> dict:
    """The state tree of a pipeline (``{}`` when unknown)."""
    return queries.pipeline_states(runtime.engine, _str_id(root_id, "root_id"), flat_children)


@_api
def get_children_states(runtime: Any, node_id: str) -> dict:
    """A node's state with its direct children (``{}`` when unknown)."""
    return queries.children_states(runtime.engine, _str_id(node_id, "node_id"))


@_api
def get_execution_data_inputs(runtime: Any, node_id: str) -> dict:
    """Rendered inputs of a node's latest run (``{}`` when none)."""
    found = queries.execution_data(runtime.engine, _str_id(node_id, "node_id"))
    return found[0] if found else {}


@_api
def get_execution_data_outputs(runtime: Any, node_id: str) -> dict:
    """Outputs of a node's latest run (``{}`` when none)."""
    found = queries.execution_data(runtime.engine, _str_id(node_id, "node_id"))
    return found[1] if found else {}


@_api
def get_execution_data(runtime: Any, node_id: str) -> dict:
    """``{"inputs", "outputs"}`` of a node's latest run; refused when the node never ran."""
    found = queries.execution_data(runtime.engine, _str_id(node_id, "node_id"))
    if found is None:
        raise NotFoundError(f"node {node_id} has no execution data: it does not exist or has not run")
    return {"inputs": found[0], "outputs": found[1]}


@_api
def get_data(runtime: Any, node_id: str) -> dict:
    """The raw (not rendered) inputs and output mapping of a node; refused (``culm.errors.NodeNotReachedError``)
    for a node no process has reached yet, as the contract says (bamboo answers from its data rows)."""
    return queries.raw_data(runtime.engine, _str_id(node_id, "node_id"))


@_api
def get_node_histories(runtime: Any, node_id: str, loop: int = -1) -> list:
    """Earlier runs of a node, oldest first (the inputs and outputs of the newest only within
    ``limits.MAX_HISTORY_READ_CHARS``; the others name what was left out in ``left_out``)."""
    return queries.histories(runtime.engine, _str_id(node_id, "node_id"), _loop_filter(loop))


@_api
def get_node_short_histories(runtime: Any, node_id: str, loop: int = -1) -> list:
    """Earlier runs of a node without inputs, outputs and retry."""
    return queries.histories(runtime.engine, _str_id(node_id, "node_id"), _loop_filter(loop), short=True)


def _loop_filter(loop: object) -> int:
    """``loop`` when it is -1 (every loop) or a loop number a database column takes (SQLite refused
    ``loop=10**30`` with an OverflowError out of the driver: a 500 from the REST service)."""
    if not isinstance(loop, int) or isinstance(loop, bool) or not -1 <= loop <= 2**62:
        shown = repr(loop) if len(repr(loop)) <= 40 else f"{repr(loop)[:40]}..."
        raise InvalidOperationError(f"loop must be -1 (every loop) or a loop number from 0 to 2**62, got {shown}")
    return loop


@_api
def get_node_logs(runtime: Any, node_id: str, version: str | None = None) -> str:
    """Lines a component logged through ``self.logger`` (current version by default)."""
    return queries.node_logs(runtime.engine, _str_id(node_id, "node_id"), version)


@_api
def get_node_log_page(runtime: Any, node_id: str, version: str | None = None, offset: int | None = None,
                      limit: int = 1000) -> dict:
    """A page of the lines a component logged (``get_node_logs`` returns at most
    ``limits.MAX_LOG_PAGE_LINES`` of them): up to ``limit`` lines from line ``offset`` (0-based;
    None: the last ``limit``), fewer when they pass ``limits.MAX_LOG_PAGE_CHARS``.

    ``data``: ``{"node_id", "version", "total", "offset", "lines"}``; ``offset`` is the first
    returned line's number, so the next page starts at ``offset + len(lines)``. An unknown node
    gives ``total`` 0 and no lines, as ``get_node_logs`` gives ``""``.
    """
    if offset is not None and (not isinstance(offset, int) or isinstance(offset, bool) or offset < 0):
        raise InvalidOperationError(f"get_node_log_page: offset must be a line number, 0 or more (or None for "
                                    f"the last lines), got {offset!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= limits.MAX_LOG_PAGE_LINES:
        raise InvalidOperationError(f"get_node_log_page: limit must be a whole number from 1 to "
                                    f"{limits.MAX_LOG_PAGE_LINES:,}, got {limit!r}")
    if version is not None:
        _str_id(version, "version")
    return queries.node_log_page(runtime.engine, _str_id(node_id, "node_id"), version, offset, limit)


@_api
def get_pipeline_debug_info(runtime: Any, pipeline_id: str) -> dict:
    """Context values and processes of a pipeline."""
    return queries.pipeline_debug_info(runtime.engine, _str_id(pipeline_id, "pipeline_id"))


@_api
def get_node_debug_info(runtime: Any, node_id: str) -> dict:
    """Definition, data and state of a node; refused (``culm.errors.NodeNotReachedError``) for a node no
    process has reached yet (``get_pipeline_tree`` shows its definition)."""
    return queries.node_debug_info(runtime.engine, _str_id(node_id, "node_id"))


def _execution_time(runtime: Any, node_id: str, what: str) -> dict:
    from datetime import UTC, datetime

    entry = queries.children_states(runtime.engine, node_id).get(node_id)
    if entry is None:
        raise NotFoundError(f"{what} {node_id} does not exist or has not been reached")
    started, archived = entry["started_time"], entry["archived_time"]
    spent = None
    if started is not None:
        spent = ((archived or datetime.now(UTC)) - started).total_seconds()
    return {"state": entry["state"], "start_time": started, "archived_time": archived, "execution_time": spent}


@_api
def get_pipeline_execution_time(runtime: Any, pipeline_id: str) -> dict:
    """``{"state", "start_time", "archived_time", "execution_time"}`` of a pipeline.

    ``execution_time`` is in seconds, up to now while the pipeline is not archived.
    """
    return _execution_time(runtime, _str_id(pipeline_id, "pipeline_id"), "pipeline")


@_api
def get_node_execution_time(runtime: Any, node_id: str) -> dict:
    """``{"state", "start_time", "archived_time", "execution_time"}`` of a node's current run.

    ``execution_time`` is in seconds, up to now while the node runs; None before it started.
    """
    return _execution_time(runtime, _str_id(node_id, "node_id"), "node")


@_api
def preview_node_inputs(
    runtime: Any,
    pipeline: dict,
    node_id: str,
    subprocess_stack: list | tuple = (),
    root_pipeline_data: dict | None = None,
    parent_params: dict | None = None,
) -> dict:
    """What a ServiceActivity's inputs (or a SubProcess's params) render to, without running it."""
    from culm.core.preview import preview
    from culm.core.settings import process_settings

    # Rendered as the runtime's workers render (its settings, else the process's defaults).
    engine = getattr(runtime, "engine", None)
    settings = engine.settings if engine is not None else process_settings()
    return preview(pipeline, node_id, list(subprocess_stack), _opt_dict(root_pipeline_data, "root_pipeline_data"),
                   _opt_dict(parent_params, "parent_params"), nested_objects=settings.render_nested_objects)


__all__ = [
    "EngineAPIResult", "list_pipelines", "run_pipeline", "pause_pipeline", "resume_pipeline", "revoke_pipeline",
    "pause_node_appoint", "resume_node_appoint", "retry_node", "retry_subprocess", "skip_node",
    "skip_exclusive_gateway", "skip_conditional_parallel_gateway", "forced_fail_activity", "callback",
    "update_context_values", "update_node_outputs", "update_node_loop_times", "get_pipeline_tree", "get_pipeline_states", "get_children_states", "get_execution_data_inputs",
    "get_execution_data_outputs", "get_execution_data", "get_data", "get_node_histories",
    "get_node_short_histories", "get_node_logs", "get_node_log_page", "get_pipeline_debug_info", "get_node_debug_info",
    "get_pipeline_execution_time", "get_node_execution_time", "preview_node_inputs",
]
