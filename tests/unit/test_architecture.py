"""The import rules of docs/architecture.md, checked against every import in ``culm/``.

The table of allowed dependencies in docs/architecture.md is the source of truth: this module
parses it, reads every ``import`` of every module (with ``ast``; function-level and
``TYPE_CHECKING`` imports count too, since they are dependencies all the same) and fails on any
import the table does not allow. ``KNOWN_VIOLATIONS`` lists the imports that break the rules
today, each with its reason; it may only shrink: a new violation fails, and so does an entry that
no longer happens (remove it).

An ``ast`` walk rather than import-linter: the rules need the faces (a package's ``__init__`` and
what its ``__all__`` names), which import-linter's contracts do not express, and one more
dependency would buy nothing the 100 lines below do not.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "culm"
DOC = REPO / "docs" / "architecture.md"
PUBLIC = "public API"

# (importing module, imported module): why it is still there. Only ever shrinks.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


def _names(cell: str) -> list[str]:
    return [n.strip().strip("`") for n in cell.split(",") if n.strip().strip("`") not in ("", "—")]


@cache
def allowed_table() -> dict[str, tuple[str, ...]]:
    """``{package or module: what it may import}`` from the doc's table (the public API alias expanded)."""
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- allowed-imports -->(.*?)<!-- /allowed-imports -->", text, re.S)
    assert block, f"{DOC} has no <!-- allowed-imports --> table"
    rows: dict[str, list[str]] = {}
    for line in block.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("importer", "") or set(cells[0]) <= {"-"}:
            continue
        (name,) = _names(cells[0]) or [""]
        assert name and name not in rows, f"{DOC}: bad or repeated row {line!r}"
        rows[name] = _names(cells[1])
    public = rows.pop(PUBLIC)
    return {name: tuple(n for t in targets for n in (public if t == PUBLIC else [t])) for name, targets in rows.items()}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def culm_modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" not in path.parts:
            yield _module_name(path), path


def imports_of(module: str, path: Path) -> Iterator[str]:
    """The culm modules (or packages) ``module`` imports, anywhere in its body."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "culm")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.split(".")[0] != "culm":
                continue
            for alias in node.names:
                yield f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base


def owner(module: str) -> str:
    """The row of the table a module falls under: its subpackage, else the module itself."""
    parts = module.split(".")
    if len(parts) > 1 and (PACKAGE / parts[1] / "__init__.py").is_file():
        return ".".join(parts[:2])
    return module


@cache
def face(package: str) -> frozenset[str]:
    """``package`` and the submodules its ``__init__`` names in ``__all__``."""
    init = REPO.joinpath(*package.split("."), "__init__.py")
    if not init.is_file():
        return frozenset({package})
    names = face_names(package)
    return frozenset({package} | {f"{package}.{n}" for n in names if _is_module(f"{package}.{n}")})


@cache
def face_names(package: str) -> tuple[str, ...]:
    init = REPO.joinpath(*package.split("."), "__init__.py")
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    return ()


def allows(rule: str, target: str) -> bool:
    if rule.endswith(".*"):
        return target == rule[:-2] or target.startswith(rule[:-1])
    return target in face(rule)


@cache
def violations() -> dict[tuple[str, str], str]:
    table = allowed_table()
    found: dict[tuple[str, str], str] = {}
    for module, path in culm_modules():
        own = owner(module)
        for target in imports_of(module, path):
            if owner(target) == own or any(allows(rule, target) for rule in table[own]):
                continue
            found[(module, target)] = f"{own} may import only {', '.join(table[own]) or 'nothing of culm'}"
    return found


def test_every_module_has_a_row_in_the_table() -> None:
    table = allowed_table()
    missing = sorted({owner(m) for m, _ in culm_modules()} - set(table))
    assert not missing, f"give these a row in the table of {DOC.name}: {missing}"
    unknown = sorted(t for targets in table.values() for t in targets if not _is_module(t.removesuffix(".*")))
    assert not unknown, f"{DOC.name} names modules that do not exist: {unknown}"


def test_imports_follow_the_table() -> None:
    new = {edge: why for edge, why in violations().items() if edge not in KNOWN_VIOLATIONS}
    assert not new, "imports that docs/architecture.md does not allow:\n" + "\n".join(
        f"  {src} imports {dst} ({why})" for (src, dst), why in sorted(new.items()))


def test_known_violations_only_shrink() -> None:
    gone = sorted(set(KNOWN_VIOLATIONS) - set(violations()))
    assert not gone, f"these are fixed: remove them from KNOWN_VIOLATIONS: {gone}"


def test_every_subpackage_has_a_curated_face() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        package = _module_name(init)
        names = face_names(package)
        assert names, f"{init.relative_to(REPO)} names what other packages may use in a literal __all__"
        module = importlib.import_module(package)
        missing = [n for n in names if not hasattr(module, n)]
        assert not missing, f"{package}.__all__ names what it does not have: {missing}"


def test_the_contract_paths_are_the_same_objects_as_their_homes() -> None:
    from culm import events, signals, states, variables
    from culm.components import events as events_home
    from culm.components import variables as variables_home
    from culm.core import signals as signals_home
    from culm.core import states as states_home

    for old, home in ((states, states_home), (signals, signals_home), (variables, variables_home),
                      (events, events_home)):
        assert old.__all__ == home.__all__
        assert all(getattr(old, name) is getattr(home, name) for name in home.__all__), old.__name__


def test_a_receiver_connected_through_either_path_hears_a_send() -> None:
    from culm import signals
    from culm.core import signals as home

    heard: list[str] = []

    def old_path(sender: object, **named: object) -> None:
        heard.append("culm.signals")

    def new_path(sender: object, **named: object) -> None:
        heard.append("culm.core.signals")

    signals.pipeline_event.connect(old_path)
    home.pipeline_event.connect(new_path)
    try:
        home.pipeline_event.send(sender=None, event=home.PipelineEvent("probe", {}))
    finally:
        signals.pipeline_event.disconnect(old_path)
        home.pipeline_event.disconnect(new_path)
    assert heard == ["culm.signals", "culm.core.signals"]


def test_the_rules_refuse_what_the_doc_forbids() -> None:
    table = allowed_table()

    def may(importer: str, target: str) -> bool:
        return owner(target) == importer or any(allows(rule, target) for rule in table[importer])

    assert not may("culm.core", "culm.storage.sql")
    assert not may("culm.core", "culm.dispatch.threads")
    assert not may("culm.storage", "culm.dispatch.threads")
    assert not may("culm.dispatch", "culm.storage.sql")
    assert not may("culm.storage", "culm.core.engine")
    assert not may("culm.web", "culm.core.walker")
    assert not may("culm.web", "culm.cli")
    assert may("culm.web", "culm.components.library")  # named by the components' face
    assert may("culm.storage", "culm.core.ports")
    assert may("culm.core", "culm.model.compiled")


def test_imports_are_read_as_modules_or_faces(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "import culm.storage.sql\n"
        "from culm.core import Engine, states\n"
        "def later():\n"
        "    from culm.dispatch.threads import ThreadDispatcher\n"
        "    from . import builder\n",
        encoding="utf-8",
    )
    found = set(imports_of("culm.probe", source))
    assert found == {"culm.storage.sql", "culm.core", "culm.core.states", "culm.dispatch.threads", "culm.builder"}


def test_the_drawing_shows_only_allowed_arrows() -> None:
    text = DOC.read_text(encoding="utf-8")
    drawing = re.search(r"```mermaid\n(.*?)```", text, re.S)
    assert drawing, f"{DOC.name} draws the packages in a mermaid block"
    table = allowed_table()
    arrows = re.findall(r"^\s*(\w+) -->(?:\|[^|]*\|)? (\w+)\s*$", drawing.group(1), re.M)
    assert len(arrows) > 10
    for src, dst in arrows:
        importer = f"culm.{src}"
        assert importer in table, f"the drawing's {src} is not a row of the table"
        if dst == "public":
            assert "culm.api" in table[importer], f"the drawing lets {src} use the public API; the table does not"
        else:
            assert any(owner(rule.removesuffix(".*")) == f"culm.{dst}" for rule in table[importer]), (
                f"the drawing has {src} --> {dst}; the table does not allow it")
