"""The v3 facade: ``PipelineParser`` and ``task_service`` of the older ``pipeline`` package.

Code written for bamboo-pipeline 3.x migrates by changing two imports::

    from culm.legacy import PipelineParser, task_service

    pipeline = PipelineParser(pipeline_tree=tree).parse()
    task_service.run_pipeline(pipeline)
    task_service.get_state(pipeline.id)

Everything runs on a default runtime, ``culm.Runtime()``, created on first use;
:func:`set_default_runtime` puts another one in its place (a test's in-memory runtime, say).
Commands return an :class:`ActionResult` instead of raising, as v3 did.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from culm import api
from culm.errors import NotFoundError, TreeInvalidError

__all__ = [
    "ActionResult",
    "LegacyPipeline",
    "PipelineParser",
    "TaskService",
    "get_default_runtime",
    "set_default_runtime",
    "task_service",
]

#: v3 reported these states as RUNNING: a node queued to run was, to its users, running.
_SHOWN_AS_RUNNING = frozenset({"CREATED", "READY"})
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

_runtime_lock = threading.Lock()
_default_runtime: Any = None


def get_default_runtime() -> Any:
    """The runtime the facade uses; ``culm.Runtime()`` is created on the first call."""
    global _default_runtime
    with _runtime_lock:
        if _default_runtime is None:
            import culm

            _default_runtime = culm.Runtime()
        return _default_runtime


def set_default_runtime(runtime: Any) -> None:
    """Make ``runtime`` the facade's runtime (None: create ``culm.Runtime()`` again on next use).

    The runtime replaced is not closed: whoever created it owns it.
    """
    global _default_runtime
    with _runtime_lock:
        _default_runtime = runtime


@dataclass
class ActionResult:
    """The outcome of a ``task_service`` command: ``result``, ``message`` and optional ``extra``."""

    result: bool
    message: str
    extra: Any = None

    def __bool__(self) -> bool:
        return self.result


def _action(outcome: api.EngineAPIResult) -> ActionResult:
    return ActionResult(outcome.result, outcome.message, outcome.data)


@dataclass
class LegacyPipeline:
    """A parsed pipeline: the tree and what to run it with; ``id`` is the tree's id."""

    tree: dict
    root_pipeline_data: dict = field(default_factory=dict)
    root_pipeline_context: dict = field(default_factory=dict)
    cycle_tolerate: bool = False

    @property
    def id(self) -> str:
        return str(self.tree["id"])


class PipelineParser:
    """Checks a pipeline tree and turns it into a :class:`LegacyPipeline`.

    Args:
        pipeline_tree: The tree (bamboo's schema).
        cycle_tolerate: Allow loop-back flows.
    """

    def __init__(self, pipeline_tree: dict, cycle_tolerate: bool = False) -> None:
        self.pipeline_tree = pipeline_tree
        self.cycle_tolerate = cycle_tolerate

    def parse(self, root_pipeline_data: dict | None = None,
              root_pipeline_context: dict | None = None) -> LegacyPipeline:
        """Validate the tree, components included, as the v3 parser did.

        Raises:
            TreeInvalidError: the tree breaks a rule or names a component that is not registered;
                ``problems`` lists every one.
        """
        from culm.validator import tree_problems

        problems = tree_problems(self.pipeline_tree, cycle_tolerate=self.cycle_tolerate)
        if problems:
            raise TreeInvalidError(problems)
        return LegacyPipeline(self.pipeline_tree, dict(root_pipeline_data or {}),
                              dict(root_pipeline_context or {}), self.cycle_tolerate)


def _format_time(value: Any) -> str | None:
    if not isinstance(value, datetime):
        return None
    return value.astimezone().strftime(_TIME_FORMAT)


def _legacy_entry(entry: dict) -> dict:
    state = entry["state"]
    return {
        "id": entry["id"],
        "state": "RUNNING" if state in _SHOWN_AS_RUNNING else state,

        "start_time": _format_time(entry.get("started_time")),
        "finish_time": _format_time(entry.get("archived_time")),
        "loop": entry.get("loop"),
        "retry": entry.get("retry"),
        "skip": entry.get("skip"),
        "children": {cid: _legacy_entry(child) for cid, child in (entry.get("children") or {}).items()},
    }


class TaskService:
    """v3's ``task_service``: commands and state queries on the default runtime."""

    @property
    def runtime(self) -> Any:
        return get_default_runtime()

    def run_pipeline(self, pipeline: LegacyPipeline, instance_id: str | None = None, check_workers: bool = True,
                     priority: int = 100, queue: str = "") -> ActionResult:
        """Start a parsed pipeline.

        Args:
            pipeline: What ``PipelineParser(...).parse()`` returned.
            instance_id: Accepted for v3 code and not used: the pipeline's id is its tree's id.
            check_workers: Accepted for v3 code and not used: culm's embedded runtime starts its
                own workers, a distributed one queues work until a worker takes it.
            priority: Message priority, 0 to 255.
            queue: Queue suffix for isolated workers.
        """
        if not isinstance(pipeline, LegacyPipeline):
            return ActionResult(False, f"run_pipeline expects PipelineParser(...).parse(), got {type(pipeline).__name__}")
        return _action(api.run_pipeline(
            self.runtime, pipeline.tree, root_pipeline_data=pipeline.root_pipeline_data,
            root_pipeline_context=pipeline.root_pipeline_context, cycle_tolerate=pipeline.cycle_tolerate,
            priority=priority, queue=queue,
        ))

    def pause_pipeline(self, pipeline_id: str) -> ActionResult:
        """Pause a pipeline (or a subprocess)."""
        return _action(api.pause_pipeline(self.runtime, pipeline_id))

    def resume_pipeline(self, pipeline_id: str) -> ActionResult:
        """Resume a paused pipeline (or subprocess)."""
        return _action(api.resume_pipeline(self.runtime, pipeline_id))

    def revoke_pipeline(self, pipeline_id: str) -> ActionResult:
        """Revoke a pipeline for good."""
        return _action(api.revoke_pipeline(self.runtime, pipeline_id))

    def pause_subprocess(self, subprocess_id: str) -> ActionResult:
        """Pause one subprocess (the rest of the pipeline goes on)."""
        return _action(api.pause_pipeline(self.runtime, subprocess_id))

    def pause_activity(self, act_id: str) -> ActionResult:
        """Stop before ``act_id`` is run (a breakpoint)."""
        return _action(api.pause_node_appoint(self.runtime, act_id))

    def resume_activity(self, act_id: str) -> ActionResult:
        """Remove the breakpoint on ``act_id``."""
        return _action(api.resume_node_appoint(self.runtime, act_id))

    def retry_activity(self, act_id: str, inputs: dict | None = None) -> ActionResult:
        """Run a failed activity again, with new inputs when given."""
        return _action(api.retry_node(self.runtime, act_id, data=inputs))

    def skip_activity(self, act_id: str) -> ActionResult:
        """Mark a failed activity finished and go on after it."""
        return _action(api.skip_node(self.runtime, act_id))

    def skip_exclusive_gateway(self, gateway_id: str, flow_id: str) -> ActionResult:
        """Let a failed exclusive gateway go on along ``flow_id``."""
        return _action(api.skip_exclusive_gateway(self.runtime, gateway_id, flow_id))

    def skip_conditional_parallel_gateway(self, gateway_id: str, flow_ids: list,
                                          converge_gateway_id: str) -> ActionResult:
        """Let a failed conditional parallel gateway fork along ``flow_ids``."""
        return _action(api.skip_conditional_parallel_gateway(self.runtime, gateway_id, flow_ids, converge_gateway_id))

    def forced_fail(self, act_id: str, ex_data: str = "") -> ActionResult:
        """Fail a running activity now."""
        return _action(api.forced_fail_activity(self.runtime, act_id, ex_data))

    def callback(self, act_id: str, data: Any = None) -> ActionResult:
        """Deliver a callback to a waiting activity; its current version is looked up here."""
        found = api.get_children_states(self.runtime, act_id)
        entry = (found.data or {}).get(act_id) if found.result else None
        if entry is None:
            return ActionResult(False, f"activity {act_id} does not exist or has not been reached")
        return _action(api.callback(self.runtime, act_id, entry["version"], data))

    def get_state(self, node_id: str) -> dict:
        """The state of a pipeline or node, children nested, in v3's shape.

        Raises:
            NotFoundError: no pipeline or node has this id, or it has not been reached yet.
        """
        found = api.get_pipeline_states(self.runtime, node_id, flat_children=False)
        states = found.data if found.result else None
        if not states:
            found = api.get_children_states(self.runtime, node_id)
            states = found.data if found.result else None
        if not states or node_id not in states:
            raise NotFoundError(f"node {node_id} does not exist, or has not been executed yet")
        return _legacy_entry(states[node_id])

    def get_inputs(self, act_id: str) -> dict:
        """Rendered inputs of an activity's latest run (``{}`` when none)."""
        return api.get_execution_data_inputs(self.runtime, act_id).data or {}

    def get_outputs(self, act_id: str) -> dict:
        """``{"outputs": {...}, "ex_data": ...}`` of an activity's latest run, v3's shape.

        ``ex_data`` is None when the run left none; ``outputs`` is ``{}`` when the node never ran.
        """
        found = api.get_execution_data_outputs(self.runtime, act_id).data or {}
        return {"outputs": found, "ex_data": found.get("ex_data")}

    def get_batch_outputs(self, act_ids: list) -> dict:
        """:meth:`get_outputs` of several activities, by id (ids that never ran are left out)."""
        batch = {}
        for act_id in act_ids:
            found = self.get_outputs(act_id)
            if found["outputs"]:
                batch[act_id] = found
        return batch

    def get_activity_histories(self, act_id: str, loop: int = -1) -> list:
        """Earlier runs of an activity, oldest first."""
        return api.get_node_histories(self.runtime, act_id, loop).data or []


#: The v3 entry point: ``from culm.legacy import task_service``.
task_service = TaskService()
