"""The :class:`Component` base: a named, versioned binding of a code to a service.

Defining a subclass validates and registers it in :mod:`culm.components.library`::

    class HttpGet(Component):
        code = "http_get"
        name = "HTTP GET"
        bound_service = HttpGetService
        version = "1.0"            # optional, "legacy" by default

A module sets ``__register_ignore__ = True`` to keep its components out of the library and
``__group_name__`` to group them in listings.
"""

from __future__ import annotations

from typing import Any

from culm.components import library
from culm.components.io import ItemSchema
from culm.components.library import DEFAULT_VERSION
from culm.components.registry import PluginDefinitionError, module_attr, qualified_name, registration_ignored
from culm.components.service import Service

__all__ = ["Component", "ComponentDefinitionError", "ComponentMeta"]


class ComponentDefinitionError(PluginDefinitionError):
    """A component class lacks ``code``, ``name`` or ``bound_service``, or has a wrong one."""


def _definition_problems(cls: type) -> list[str]:
    problems = []
    for attr in ("code", "name", "version"):
        value = getattr(cls, attr, None)
        if not isinstance(value, str) or not value:
            problems.append(f"`{attr}` must be a non-empty str, got {value!r}")
    service = getattr(cls, "bound_service", None)
    if not (isinstance(service, type) and issubclass(service, Service)):
        problems.append(f"`bound_service` must be a Service subclass, got {service!r}")
    return problems


class ComponentMeta(type):
    """Validates and registers every concrete :class:`Component` subclass when it is defined."""

    def __init__(cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> None:
        super().__init__(name, bases, namespace)
        if not any(isinstance(base, ComponentMeta) for base in bases):
            return  # the Component base itself
        cls.group_name = module_attr(cls, "__group_name__") or cls.__module__.rsplit(".", 1)[-1].title()
        cls.group_icon = module_attr(cls, "__group_icon__")
        if not namespace.get("version", True):  # bamboo: a falsy version means the default one
            cls.version = DEFAULT_VERSION
        if registration_ignored(cls):
            return
        problems = _definition_problems(cls)
        if problems:
            raise ComponentDefinitionError(f"component class {qualified_name(cls)}: " + "; ".join(problems))
        library.register(cls)  # type: ignore[arg-type]


class Component(metaclass=ComponentMeta):
    """Base of every component. See the module docstring for how to define one.

    Class attributes:
        code: Identity of the component, unique together with ``version``.
        name: Display name.
        bound_service: The :class:`~culm.components.service.Service` subclass that runs it.
        version: Version of the code, ``"legacy"`` unless set (``None`` or ``""`` also mean ``"legacy"``,
            as in bamboo).
        is_default_version: Whether forms should offer this version first.
        form, output_form, desc, base, embedded_form: Presentation metadata, unused by the engine.
        group_name, group_icon: Set from the module's ``__group_name__`` / ``__group_icon__``.

    Args:
        data_dict: Optional node inputs this instance describes (kept as ``data_dict``).
    """

    code: str | None = None
    name: str | None = None
    bound_service: type[Service] | None = None
    version: str = DEFAULT_VERSION
    is_default_version: bool = False
    form: str | None = None
    output_form: str | None = None
    desc: str = ""
    base: str | None = None
    embedded_form: bool = False
    group_name: str = ""
    group_icon: str | None = None

    def __init__(self, data_dict: dict[str, Any] | None = None) -> None:
        self.data_dict = dict(data_dict or {})

    @classmethod
    def _new_bound_service(cls) -> Service:
        if cls.bound_service is None:
            raise ComponentDefinitionError(f"component class {qualified_name(cls)} has no bound_service")
        return cls.bound_service()

    @classmethod
    def inputs_format(cls) -> list[dict[str, Any]]:
        """Returns the bound service's input declarations as dicts."""
        return [item.as_dict() for item in cls._new_bound_service().inputs()]

    @classmethod
    def outputs_format(cls) -> list[dict[str, Any]]:
        """Returns the bound service's output declarations (including engine outputs) as dicts."""
        return [item.as_dict() for item in cls._new_bound_service().outputs()]

    @classmethod
    def get_input_schema(cls, key: str) -> ItemSchema | None:
        """Returns the schema of one declared input, None if it declares none.

        Raises:
            KeyError: the service declares no input with that key.
        """
        for item in cls._new_bound_service().inputs():
            if item.key == key:
                return item.schema
        raise KeyError(f"component {cls.code!r} declares no input {key!r}")

    @classmethod
    def get_output_schema(cls, key: str) -> ItemSchema | None:
        """Returns the schema of one declared output, None if it declares none.

        Raises:
            KeyError: the service declares no output with that key.
        """
        for item in cls._new_bound_service().outputs():
            if item.key == key:
                return item.schema
        raise KeyError(f"component {cls.code!r} declares no output {key!r}")

    @classmethod
    def form_is_embedded(cls) -> bool:
        """Whether the component's form is embedded rather than loaded from a file."""
        return bool(cls.embedded_form)

    def service(self) -> Service:
        """Returns a new instance of the bound service."""
        return self._new_bound_service()
