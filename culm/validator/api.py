"""``bamboo_engine.validator.api`` under culm: the same functions as :mod:`culm.validator`."""

from culm.validator import (  # noqa: F401  (re-exported: __all__ below lists them)
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
from culm.validator import __all__ as _package_names

__all__ = [name for name in _package_names if name != "api"]  # the names imported above
