"""bamboo-pipeline's contrib features culm has, under bamboo's module names
(``pipeline.contrib.<name>`` → ``culm.contrib.<name>``): :mod:`culm.contrib.node_timeout`."""

from culm.contrib import node_timeout

__all__ = ["node_timeout"]
