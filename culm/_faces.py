"""Package faces whose names are imported when first used (PEP 562's module ``__getattr__``).

``import culm.core.records`` runs ``culm/__init__.py`` and ``culm/core/__init__.py`` first; a face
that imported everything it names made every ``culm`` command, ``culm --help`` included, load the
engine, the validator, the template sandbox and SQLAlchemy (0.6-1 s of CPU) before reading its
arguments. A lazy face costs nothing until a name of it is used; then that name's module is
imported and the value kept as the package's own attribute (the next use is a plain lookup).
Standard library only, so that every package may use it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_face(package: str, homes: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose names live in ``homes``.

    Args:
        package: the package's ``__name__``.
        homes: each name the face offers -> the module it comes from, absolute or relative to
            ``package`` (``".records"``). A name that is that module's own (``"records":
            ".records"``) is the module itself; any other is the module's attribute of that name.
    """

    def getattr_(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(home, package)
        value = module if module.__name__.rpartition(".")[2] == name else getattr(module, name)
        setattr(sys.modules[package], name, value)
        return value

    def dir_() -> list[str]:
        return sorted({*vars(sys.modules[package]), *homes})

    return getattr_, dir_
