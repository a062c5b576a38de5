"""Components: the units of work a pipeline's activities run.

Write a :class:`Service` (the logic), bind it to a code with a :class:`Component` subclass
(which registers it), and find it again through :mod:`culm.components.library`.
"""

# `builtin` is imported for its side effect: the example components register themselves.
from culm.components import builtin as _builtin  # noqa: F401
from culm.components import events, library, variables
from culm.components.component import Component, ComponentDefinitionError
from culm.components.io import (
    ArrayItemSchema,
    BooleanItemSchema,
    FloatItemSchema,
    InputItem,
    IntItemSchema,
    ItemSchema,
    ObjectItemSchema,
    OutputItem,
    StringItemSchema,
)
from culm.components.library import ComponentConflictError, ComponentNotFoundError
from culm.components.service import (
    AbstractIntervalGenerator,
    DataObject,
    DefaultIntervalGenerator,
    LinearIntervalGenerator,
    NullIntervalGenerator,
    Service,
    SquareIntervalGenerator,
    StaticIntervalGenerator,
)

__all__ = [
    # services and the data they see
    "Service",
    "DataObject",
    # components and their library
    "Component",
    "library",
    "ComponentConflictError",
    "ComponentDefinitionError",
    "ComponentNotFoundError",
    # input/output declarations
    "InputItem",
    "OutputItem",
    "ItemSchema",
    "IntItemSchema",
    "StringItemSchema",
    "FloatItemSchema",
    "BooleanItemSchema",
    "ArrayItemSchema",
    "ObjectItemSchema",
    # the other plugin kinds (also culm.variables and culm.events)
    "variables",
    "events",
    # poll intervals
    "AbstractIntervalGenerator",
    "DefaultIntervalGenerator",
    "SquareIntervalGenerator",
    "StaticIntervalGenerator",
    "NullIntervalGenerator",
    "LinearIntervalGenerator",
]
