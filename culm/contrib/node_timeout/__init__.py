"""Node timeouts, as bamboo-pipeline's ``pipeline.contrib.node_timeout`` (see docs/node-timeout.md).

``from culm.contrib.node_timeout.api import ...`` works as bamboo's
``from pipeline.contrib.node_timeout.api import ...``; the names are here too.
"""

from culm.contrib.node_timeout.api import (
    ACTIONS,
    TimeoutNodeConfig,
    apply_node_timeout_configs,
    apply_node_timout_configs,
    batch_create_node_timeout_config,
)

__all__ = [
    "ACTIONS",
    "TimeoutNodeConfig",
    "apply_node_timeout_configs",
    "apply_node_timout_configs",
    "batch_create_node_timeout_config",
]
