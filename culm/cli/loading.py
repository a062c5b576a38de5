"""Reading pipeline trees and component modules for ``run`` and ``validate``; tree helpers."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from culm.cli.common import LONG_NUMBER, UsageError, json_object, not_utf8


def import_names(names: Sequence[str] | None) -> list[str]:
    """Module names from ``--import`` options and ``$CULM_IMPORTS`` (comma-separated), each once."""
    found: list[str] = []
    raw = [*(names or []), *os.environ.get("CULM_IMPORTS", "").split(",")]
    for item in raw:
        for name in item.split(","):
            name = name.strip()
            if name and name not in found:
                found.append(name)
    return found


def _short_error(exc: BaseException) -> str:
    """``Type: message`` plus the innermost frame, without the whole traceback."""
    if isinstance(exc, SyntaxError) and exc.filename:
        # The error is in the file, not in a frame that ran: the last frame is culm's importer.
        return f"{type(exc).__name__}: {exc.msg} (at {exc.filename}:{exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    user_frames = [f for f in frames if not f.filename.startswith("<")]
    where = f" (at {user_frames[-1].filename}:{user_frames[-1].lineno})" if user_frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def import_modules(names: Sequence[str]) -> None:
    """Import the modules that define components, so that they register.

    Raises:
        UsageError: a module is missing or raised while being imported.
    """
    # Modules named relative to the working directory should import as they do with `python -m`.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        if name.endswith(".py"):
            if not Path(name).is_file():
                raise UsageError(f"cannot import {name}: no such file")
            load_module_file(Path(name))
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):  # it imports a missing one
                raise UsageError(f"cannot import module {name!r}: {_short_error(exc)}") from exc
            raise UsageError(f"cannot import module {name!r}: no such module on the path "
                             f"(the working directory and $PYTHONPATH are searched)") from exc
        except Exception as exc:
            raise UsageError(f"cannot import module {name!r}: {_short_error(exc)}") from exc


def load_module_file(path: Path) -> Any:
    """Import a ``.py`` file under its stem, with its folder importable (for sibling modules)."""
    name = path.stem
    if not name.isidentifier():
        raise UsageError(f"{path}: the file name must be a valid module name to be imported")
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    existing = sys.modules.get(name)
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() != path.resolve():
        raise UsageError(f"{path}: module name {name!r} is already taken by {existing!r}; rename the file")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise UsageError(f"{path}: import failed: {_short_error(exc)}") from exc
    return module


def _tree_from_module(path: Path) -> dict:
    module = load_module_file(path)
    build = getattr(module, "build_pipeline", None)
    if callable(build):
        try:
            tree = build()
        except Exception as exc:
            raise UsageError(f"{path}: build_pipeline() failed: {_short_error(exc)}") from exc
    elif hasattr(module, "pipeline"):
        tree = module.pipeline
    else:
        raise UsageError(f"{path}: defines neither a module-level `pipeline` dict nor `build_pipeline()`")
    if not isinstance(tree, dict):
        raise UsageError(f"{path}: the pipeline must be a dict (a pipeline tree), got {type(tree).__name__}")
    return tree


class _Unreadable(UsageError):
    """A tree file that holds no text to read as JSON (empty, binary): said as such, whatever its name."""


def _tree_from_json(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if not raw:
        raise _Unreadable(f"{path}: the file is empty (expected a pipeline tree: a JSON object)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Unreadable(f"{path}: {not_utf8(exc)}") from None
    if not text.strip():  # blank lines or spaces only: empty, not "invalid JSON: Expecting value"
        raise _Unreadable(f"{path}: the file is empty: it holds only whitespace (expected a pipeline tree: "
                          "a JSON object)")
    return json_object(text, f"{path}:", "a pipeline tree")


def load_tree(source: str, imports: Sequence[str] | None) -> dict:
    """Import the component modules, then read the tree from a ``.json`` or ``.py`` file.

    Raises:
        UsageError: the file is missing or unusable, or an import failed.
    """
    import_modules(import_names(imports))
    path = Path(source)
    if path.is_dir():
        raise UsageError(f"{source}: a folder, not a tree file (give a TREE.json or a MODULE.py)")
    if not path.is_file():
        raise UsageError(f"{source}: no such file")
    if path.suffix == ".py":
        return _tree_from_module(path)
    if path.suffix.lower() == ".json":
        return _tree_from_json(path)
    # Another name (a tree saved as tree.txt, or no extension) is still read as JSON; when that
    # fails, "invalid JSON" alone did not tell a user who gave README.md what culm wanted.
    try:
        return _tree_from_json(path)
    except _Unreadable:
        raise
    except UsageError as exc:
        detail = str(exc).removeprefix(str(path)).removeprefix(":").strip()
        raise UsageError(f"{source}: expected a TREE.json or a MODULE.py; read as JSON, it fails: {detail}") from None


def parse_value(text: str) -> Any:
    """A ``KEY=VALUE`` option's value: JSON when it parses (``3``, ``true``, ``[1]``), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
    except RecursionError:
        raise UsageError(f"value {text[:40]!r}...: arrays or objects nested too deeply to be read") from None
    except ValueError:  # an int of more digits than Python reads
        raise UsageError(f"value {text[:40]!r}...: {LONG_NUMBER}") from None


def split_assignment(item: str, flag: str, example: str = "") -> tuple[str, Any]:
    """``KEY=VALUE`` into ``(KEY, value)``; ``${KEY}`` is accepted for ``KEY``.

    ``example`` is how a right call starts, for the message (``flag`` when empty).
    """
    key, sep, value = item.partition("=")
    key = key.strip()
    if key.startswith("${") and key.endswith("}"):
        key = key[2:-1]
    if not sep or not key:
        raise UsageError(f"{flag} {item!r}: expected KEY=VALUE (for example {example or flag} who=world)")
    return key, parse_value(value)


def apply_settings(tree: dict, items: Sequence[str]) -> dict:
    """Override the values of context inputs the tree declares (``--set who=world`` sets ``${who}``).

    Raises:
        UsageError: a key the tree does not declare (the message lists those it does).
    """
    if not items:
        return tree
    inputs = (tree.get("data") or {}).get("inputs")
    declared = inputs if isinstance(inputs, dict) else {}
    for item in items:
        key, value = split_assignment(item, "--set")
        ref = "${" + key + "}"
        slot = declared.get(ref)
        if not isinstance(slot, dict):
            known = ", ".join(sorted(k[2:-1] for k in declared if k.startswith("${") and k.endswith("}")))
            raise UsageError(f"--set {key}: the tree declares no context input ${{{key}}} "
                             f"(it declares: {known or 'none'})")
        declared[ref] = {**slot, "value": value}
    return tree
