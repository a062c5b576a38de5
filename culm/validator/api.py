"""``bamboo_engine.validator.api`` under culm: the same functions as :mod:`culm.validator`."""

from culm.validator import (
    StartPositionInvalidError,
    StartPositionInvalidException,
    TreeInvalidError,
    add_sink_type,
    get_allowed_start_node_ids,
    get_skipped_execute_node_ids,
    sink_types,
    tree_problems,
    tree_warnings,
    validate_and_process_pipeline,
    validate_pipeline_start_node,
)

__all__ = [
    "StartPositionInvalidError",
    "StartPositionInvalidException",
    "TreeInvalidError",
    "add_sink_type",
    "get_allowed_start_node_ids",
    "get_skipped_execute_node_ids",
    "sink_types",
    "tree_problems",
    "tree_warnings",
    "validate_and_process_pipeline",
    "validate_pipeline_start_node",
]
