"""Node and pipeline states: :mod:`culm.core.states` at the path the public contract names.

The same objects as there (one transition table, wherever it is imported from), and bamboo's other
names for them: the ``StateType`` enum (``StateType.FINISHED.value == FINISHED``) and
``TRANSITION``, the table under bamboo's name.
"""

from enum import Enum

from culm.core import states as _home
from culm.core.states import *  # noqa: F403

StateType = Enum("StateType", {name: name for name in sorted(_home.ALL_STATES)}, type=str)  # type: ignore[misc]
StateType.__doc__ = "Every state as an enum member whose value is the state's name (bamboo's ``StateType``)."
TRANSITION = _home.TRANSITIONS

__all__ = [*_home.__all__, "StateType", "TRANSITION"]
