"""Input and output declarations of a service, with optional value schemas.

A service lists what it reads in ``inputs_format()`` and what it writes in ``outputs_format()``.
The declarations are descriptive: the engine does not enforce them, but forms, documentation and
the component test harness (:mod:`culm.components.testing`) read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ArrayItemSchema",
    "BooleanItemSchema",
    "FloatItemSchema",
    "InputItem",
    "IntItemSchema",
    "ItemSchema",
    "ObjectItemSchema",
    "OutputItem",
    "StringItemSchema",
]


class ItemSchema:
    """Base of the value schemas; subclasses set the class attribute ``type``.

    Args:
        description: Human-readable meaning of the value.
        enum: The allowed values, empty when any value of the type is allowed.
    """

    type: str = ""

    def __init__(self, description: str = "", enum: list[Any] | None = None) -> None:
        self.description = description
        self.enum: list[Any] = list(enum) if enum else []

    def as_dict(self) -> dict[str, Any]:
        """Returns the schema as ``{"type", "description", "enum"}``."""
        return {"type": self.type, "description": self.description, "enum": list(self.enum)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(description={self.description!r}, enum={self.enum!r})"


class IntItemSchema(ItemSchema):
    """An integer value."""

    type = "int"


class StringItemSchema(ItemSchema):
    """A string value."""

    type = "string"


class FloatItemSchema(ItemSchema):
    """A floating point value."""

    type = "float"


class BooleanItemSchema(ItemSchema):
    """A boolean value."""

    type = "boolean"


class ArrayItemSchema(ItemSchema):
    """A list whose every element follows ``item_schema``.

    Args:
        item_schema: Schema of each element.
        description: Human-readable meaning of the value.
        enum: The allowed values, empty when any list is allowed.
    """

    type = "array"

    def __init__(self, item_schema: ItemSchema, description: str = "", enum: list[Any] | None = None) -> None:
        super().__init__(description, enum)
        self.item_schema = item_schema

    def as_dict(self) -> dict[str, Any]:
        """Returns the schema with its element schema under ``"items"``."""
        return {**super().as_dict(), "items": self.item_schema.as_dict()}


class ObjectItemSchema(ItemSchema):
    """A mapping whose named properties follow their own schemas.

    Args:
        property_schemas: Schema of each property, by property name.
        description: Human-readable meaning of the value.
        enum: The allowed values, empty when any mapping is allowed.
    """

    type = "object"

    def __init__(
        self,
        property_schemas: Mapping[str, ItemSchema],
        description: str = "",
        enum: list[Any] | None = None,
    ) -> None:
        super().__init__(description, enum)
        self.property_schemas = dict(property_schemas)

    def as_dict(self) -> dict[str, Any]:
        """Returns the schema with its property schemas under ``"properties"``."""
        properties = {name: schema.as_dict() for name, schema in self.property_schemas.items()}
        return {**super().as_dict(), "properties": properties}


class _Item:
    """Fields common to input and output declarations."""

    def __init__(self, name: str, key: str, type: str, schema: ItemSchema | None = None) -> None:
        self.name = name
        self.key = key
        self.type = type
        self.schema = schema

    def as_dict(self) -> dict[str, Any]:
        """Returns ``{"name", "key", "type", "schema"}``; ``schema`` is ``{}`` when none is declared."""
        schema = self.schema.as_dict() if self.schema is not None else {}
        return {"name": self.name, "key": self.key, "type": self.type, "schema": schema}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, key={self.key!r}, type={self.type!r})"


class InputItem(_Item):
    """One value a service reads from ``data.inputs``.

    Args:
        name: Human-readable label.
        key: The key in ``data.inputs``.
        type: Free-form type label shown to users (for example ``"string"``).
        required: Whether the service needs the key to be present.
        schema: Optional structured description of the value.
    """

    def __init__(
        self, name: str, key: str, type: str, required: bool = True, schema: ItemSchema | None = None
    ) -> None:
        super().__init__(name, key, type, schema)
        self.required = required

    def as_dict(self) -> dict[str, Any]:
        """Returns the declaration as a dict, including ``"required"``."""
        return {**super().as_dict(), "required": self.required}


class OutputItem(_Item):
    """One value a service writes to ``data.outputs``.

    Args:
        name: Human-readable label.
        key: The key in ``data.outputs``.
        type: Free-form type label shown to users (for example ``"int"``).
        schema: Optional structured description of the value.
    """
