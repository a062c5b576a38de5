"""Executable end events: :mod:`culm.components.events` at the path the public contract names.

The same registry and classes as there. Subclass :class:`ExecutableEndEvent`, give it a unique
``code`` and implement ``execute``; defining the class registers it (or register it bamboo's way
with ``FlowNodeClsFactory.register_node(key, cls)``).
"""

from culm.components import events as _home
from culm.components.events import *  # noqa: F403

__all__ = list(_home.__all__)
