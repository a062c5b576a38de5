"""bamboo's validator helpers under bamboo's names (drop-in for ``bamboo_engine.validator.api``).

For "start at a chosen node" and custom end events::

    from culm import validator

    validator.get_allowed_start_node_ids(tree)            # where a run may start
    validator.validate_pipeline_start_node(tree, node_id)  # raises StartPositionInvalidError
    validator.get_skipped_execute_node_ids(tree, node_id)  # what such a run leaves out

``from culm.validator import api`` and ``from culm.validator.api import ...`` work as bamboo's
``bamboo_engine.validator`` imports do.
The rules themselves live in :mod:`culm.model.validator`; this module only adapts the names, and
adds :func:`tree_problems` and :func:`tree_warnings`, which ``culm validate``, the service's
``/validate`` and the v3 parser share.
"""

from __future__ import annotations

import threading
from typing import Any

from culm.errors import (
    StartPositionInvalidError,
    StartPositionInvalidException,
    TreeInvalidError,
    TreeProblem,
)
from culm.model import validator as _rules

__all__ = [
    "StartPositionInvalidError",
    "StartPositionInvalidException",
    "TreeInvalidError",
    "add_sink_type",
    "api",
    "get_allowed_start_node_ids",
    "get_skipped_execute_node_ids",
    "sink_types",
    "tree_problems",
    "tree_warnings",
    "validate_and_process_pipeline",
    "validate_pipeline_start_node",
]

_sink_lock = threading.Lock()
_sink_types: set[str] = {"EmptyEndEvent"}


def get_allowed_start_node_ids(pipeline_tree: dict[str, Any]) -> list[str]:
    """Ids of the nodes a run may start at: the main line, outside parallel blocks and subprocesses.

    Raises:
        TreeInvalidError: The tree itself is invalid (loops are tolerated).
    """
    return _rules.allowed_start_node_ids(pipeline_tree)


def validate_pipeline_start_node(pipeline: dict[str, Any], node_id: str) -> None:
    """Check that a run of ``pipeline`` may start at ``node_id`` (the start event always may).

    Raises:
        StartPositionInvalidError: (also importable as ``StartPositionInvalidException``) the node
            cannot be a start position; the message says why.
        TreeInvalidError: The tree itself is invalid.
    """
    _rules.validate_start_node(pipeline, node_id)


def get_skipped_execute_node_ids(pipeline_tree: dict[str, Any], start_node_id: str,
                                 validate: bool = True) -> list[str]:
    """Ids of the nodes that do not run when a run starts at ``start_node_id``.

    Args:
        pipeline_tree: The pipeline tree.
        start_node_id: Where the run starts.
        validate: Check first that ``start_node_id`` is an allowed start position.

    Raises:
        StartPositionInvalidError: ``start_node_id`` is not an allowed start position (bamboo
            raises a bare ``Exception`` here).
        TreeInvalidError: The tree itself is invalid.
    """
    return _rules.skipped_node_ids(pipeline_tree, start_node_id, validate=validate)


def validate_and_process_pipeline(pipeline: dict[str, Any], cycle_tolerate: bool = False) -> dict[str, Any]:
    """Validate a tree and normalise it in place, as bamboo does before running it.

    Normalising adds ``converge_gateway_id`` to the gateways that have one and turns every
    ``incoming`` into a list, in subprocesses too. Executable end events and lazy variables must
    be registered in this process, as :func:`culm.api.run_pipeline` requires.

    Returns:
        ``pipeline`` itself (bamboo returns None).

    Raises:
        TreeInvalidError: (also importable as ``culm.errors.TreeInvalidException``) the tree
            breaks at least one rule; ``problems`` lists every one of them.
    """
    from culm.components import events, variables

    processed = _rules.process_tree(pipeline, cycle_tolerate=cycle_tolerate, lazy_exists=variables.library.has,
                                    end_event_exists=events.library.has)
    pipeline.clear()
    pipeline.update(processed)
    return pipeline


def tree_problems(pipeline_tree: Any, cycle_tolerate: bool = False, components: bool = True) -> list[TreeProblem]:
    """Every problem of ``pipeline_tree``, each naming its node or flow id (empty: it is valid).

    The lazy variables and end events it names are looked up in this process's registries.

    Args:
        pipeline_tree: A pipeline tree (anything: a tree that is not even a dict is one problem).
        cycle_tolerate: Whether cycles are allowed.
        components: Also check that every component it names is registered in this process (False
            when other processes, a cluster's workers, run them).
    """
    from culm.components import events, library, variables

    return _rules.validate_tree(
        pipeline_tree, cycle_tolerate=cycle_tolerate, component_exists=library.has if components else None,
        lazy_exists=variables.library.has, end_event_exists=events.library.has,
    )


def tree_warnings(pipeline_tree: Any) -> list[TreeProblem]:
    """The template fragments and gateway conditions of ``pipeline_tree`` that will not parse
    (a fragment stays text); warnings, not problems: such a tree still runs."""
    return list(_rules.tree_warnings(pipeline_tree))


def add_sink_type(node_type: str) -> None:
    """Declare a custom end-event type, as bamboo requires before such an end event validates.

    In culm an end-event type is a sink as soon as a class is registered for it (with ``code`` or
    :meth:`culm.events.FlowNodeClsFactory.register_node`); this records the declaration so that
    code written for bamboo runs unchanged, and :func:`sink_types` lists what was declared.
    """
    if not isinstance(node_type, str) or not node_type:
        raise TypeError(f"add_sink_type needs a non-empty str node type, got {node_type!r}")
    with _sink_lock:
        _sink_types.add(node_type)


def sink_types() -> list[str]:
    """The end-event types declared with :func:`add_sink_type` (and ``EmptyEndEvent``), sorted."""
    with _sink_lock:
        return sorted(_sink_types)


# bamboo's code imports ``api`` from ``bamboo_engine.validator``, or names from
# ``bamboo_engine.validator.api``: the submodule holds the same functions.
from culm.validator import api  # noqa: E402  (it reads the names above)
