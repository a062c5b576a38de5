"""Importing the modules that define plugins: ``--import`` options and ``$CULM_IMPORTS``.

bamboo-pipeline finds components through Django's installed apps; culm through the modules named
in ``$CULM_IMPORTS`` (comma-separated), which every process that runs pipeline work imports: a
``culm worker``, and an embedded runtime (whose threads run the work), so that a component defined
there runs the same way on both.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from culm.errors import PluginImportError

ENV = "CULM_IMPORTS"
_lock = threading.RLock()


def env_modules() -> list[str]:
    """The module names (or ``.py`` files) in ``$CULM_IMPORTS``, each once, in order."""
    names: list[str] = []
    for name in os.environ.get(ENV, "").split(","):
        if name.strip() and name.strip() not in names:
            names.append(name.strip())
    return names


def import_modules(names: Iterable[str], source: str = f"${ENV}") -> list[str]:
    """Import each module (a ``.py`` file under its stem, unless a module was loaded from that file
    already); a module imported before is not run again.

    Args:
        names: module names or ``.py`` paths.
        source: where the names came from, for the error message.

    Returns:
        The names, each once.

    Raises:
        PluginImportError: a module is missing or raised while it was imported, naming it and ``source``.
    """
    seen: list[str] = []
    with _lock:  # two runtimes created at once import a module once
        for name in names:
            name = name.strip()
            if not name or name in seen:
                continue
            try:
                _import_file(Path(name)) if name.endswith(".py") else importlib.import_module(name)
            except Exception as exc:
                raise PluginImportError(
                    f"cannot import {name!r} (named in {source}): {type(exc).__name__}: {exc}"
                ) from exc
            seen.append(name)
    return seen


def _import_file(path: Path) -> None:
    target = path.resolve()
    for module in list(sys.modules.values()):
        where = getattr(module, "__file__", None)
        if where and Path(where).resolve() == target:
            return
    spec = importlib.util.spec_from_file_location(target.stem, target)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[target.stem] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(target.stem, None)
        raise
