"""Node and pipeline states: :mod:`culm.core.states` at the path the public contract names.

The same objects as there (one transition table, wherever it is imported from).
"""

from culm.core import states as _home
from culm.core.states import *  # noqa: F403

__all__ = list(_home.__all__)
