"""The calls of the lookup-argument tests (``tests/unit/test_lookup_arguments.py`` and
``tests/integration/test_lookup_arguments_servers.py``): each with an id, a version or a filter
holding text no database can carry, and the check of its answer."""

from __future__ import annotations

from typing import Any

import culm
from culm import api
from culm.errors import InvalidOperationError

TEXTS = {"NUL": "a\x00b", "surrogate": "a\udcffb"}
REASONS = {"NUL": "a NUL character", "surrogate": "a lone surrogate"}

# (the API function, the argument given the bad text, its other arguments)
CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("get_pipeline_tree", "pipeline_id", {}),
    ("get_pipeline_states", "root_id", {}),
    ("get_pipeline_debug_info", "pipeline_id", {}),
    ("get_node_debug_info", "node_id", {}),
    ("get_node_histories", "node_id", {}),
    ("get_node_logs", "node_id", {}),
    ("get_node_log_page", "version", {"node_id": "n1"}),
    ("get_children_states", "node_id", {}),
    ("get_node_execution_time", "node_id", {}),
    ("pause_pipeline", "pipeline_id", {}),
    ("revoke_pipeline", "pipeline_id", {}),
    ("retry_node", "node_id", {}),
    ("skip_node", "node_id", {}),
    ("update_node_loop_times", "node_id", {"loop_times": 2}),
    ("callback", "version", {"node_id": "n1", "data": {}}),
    ("list_pipelines", "name", {}),
]


def check_refused(runtime: culm.Runtime, kind: str, what: str, argument: str, others: dict[str, Any]) -> None:
    """``api.<what>`` with the ``kind`` text as ``argument`` is refused naming the argument and
    why, and the runtime still answers an ordinary call after it."""
    result = getattr(api, what)(runtime, **{argument: TEXTS[kind]}, **others)
    assert not result.result
    assert type(result.exc) is InvalidOperationError, result.message
    assert result.message.startswith(f"{argument} holds {REASONS[kind]}, which no stored id or name holds"), result.message
    assert api.list_pipelines(runtime).data["total"] == 0
