"""Lazy variables: :mod:`culm.components.variables` at the path the public contract names.

The same registry and classes as there. Subclass :class:`LazyVariable`, give it a unique ``code``
and implement ``get_value``; defining the class registers it.
"""

from culm.components import variables as _home
from culm.components.variables import *  # noqa: F403

__all__ = list(_home.__all__)
