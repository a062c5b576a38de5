"""Context variables and hydration: turning ``${name}`` variables into values for one node.

Three kinds, as in bamboo: ``plain`` (the value as is), ``splice`` (a template rendered against
the variables it refers to) and ``lazy`` (rendered like a splice, then handed to a resolver,
usually a registered lazy-variable class). Every variable is resolved at most once per call and
the work is iterative, so long reference chains cannot exhaust the stack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from culm.data import template
from culm.data.sandbox_guards import describe
from culm.errors import ExpressionError, HydrationError

PLAIN = "plain"
SPLICE = "splice"
LAZY = "lazy"
VAR_TYPES = frozenset({PLAIN, SPLICE, LAZY})

LazyResolver = Callable[["ContextVar", Any], Any]


@dataclass(frozen=True, slots=True)
class ContextVar:
    """One variable of a pipeline context.

    Attributes:
        key: The ``${name}`` key.
        type: ``"plain"``, ``"splice"`` or ``"lazy"``.
        value: The raw value (a template for splice and lazy variables).
        code: For a lazy variable, the code of the class that computes it.
    """

    key: str
    type: str
    value: Any
    code: str | None = None


def deformat(key: str) -> str:
    """``"${a}"`` → ``"a"``; other strings are returned unchanged."""
    return key[2:-1] if key.startswith("${") and key.endswith("}") else key


def format_key(name: str) -> str:
    """``"a"`` → ``"${a}"``."""
    return f"${{{name}}}"


def lazy_input_key(input_key: str, node_id: str) -> str:
    """The context key bamboo generates for a lazy input or param ``input_key`` of node ``node_id``:
    ``"${<input key>_<node id>}"`` (``${x}`` keys lose their braces first)."""
    return format_key(f"{deformat(input_key)}_{node_id}")


def var_references(var: ContextVar) -> frozenset[str]:
    """The ``${name}`` keys a variable's value refers to (none for a plain variable)."""
    if var.type == PLAIN:
        return frozenset()
    return frozenset(template.references(var.value))


def transitive_references(variables: Mapping[str, ContextVar], keys: Iterable[str]) -> set[str]:
    """Every existing key among ``keys`` plus every key they need, directly or not."""
    found: set[str] = set()
    pending = [key for key in keys if key in variables]
    while pending:
        key = pending.pop()
        if key in found:
            continue
        found.add(key)
        pending.extend(ref for ref in var_references(variables[key]) if ref in variables and ref not in found)
    return found


def hydrate(
    variables: Mapping[str, ContextVar],
    keys: Iterable[str],
    *,
    lazy_resolver: LazyResolver | None = None,
    nested_objects: bool = False,
) -> dict[str, Any]:
    """Resolve ``keys`` and everything they need.

    Args:
        variables: The context, by ``${name}`` key.
        keys: The ``${name}`` keys wanted; unknown ones are ignored.
        lazy_resolver: Called as ``lazy_resolver(var, rendered_value)`` for each lazy variable;
            without one a lazy variable resolves to its rendered value.
        nested_objects: a splice or lazy value that is a sole ``${name['key'][0]}`` fragment
            gives the object it points at (bamboo's ``ENABLE_RENDER_OBJ_BY_MAKO_STRING``).

    Returns:
        ``{bare name: value}`` for the requested keys and all their transitive references.
        References to keys that do not exist are simply absent.

    Raises:
        HydrationError: A reference cycle, a template over its bounds, an unknown variable
            type, or a failing lazy resolver; the message names the variable(s).
    """
    if not isinstance(keys, set | frozenset | list | tuple):
        keys = list(keys)  # read twice below
    plain: dict[str, Any] = {}
    for key in keys:
        var = variables.get(key)
        if var is None:
            continue
        if var.type != PLAIN:
            break
        plain[deformat(key)] = var.value
    else:
        return plain  # nothing to render or order
    wanted = [key for key in keys if key in variables]
    refs = {key: var_references(variables[key]) for key in transitive_references(variables, wanted)}
    resolved: dict[str, Any] = {}
    for key in _dependency_order(refs):
        namespace = {deformat(ref): resolved[ref] for ref in refs[key] if ref in resolved}
        resolved[key] = _resolve(variables[key], namespace, lazy_resolver, nested_objects)
    return {deformat(key): value for key, value in resolved.items()}


def _dependency_order(refs: Mapping[str, frozenset[str]]) -> list[str]:
    """Keys ordered so each comes after what it refers to; raises on a cycle."""
    order: list[str] = []
    done: set[str] = set()
    for root in sorted(refs):
        if root in done:
            continue
        path = [root]
        on_path = {root}
        stack = [iter(sorted(refs[root]))]
        while stack:
            ref = next((r for r in stack[-1] if r in refs and r not in done), None)
            if ref is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                order.append(finished)
            elif ref in on_path:
                cycle = path[path.index(ref) :] + [ref]
                raise HydrationError(f"reference cycle between variables: {' -> '.join(cycle)}")
            else:
                path.append(ref)
                on_path.add(ref)
                stack.append(iter(sorted(refs[ref])))
    return order


def _resolve(var: ContextVar, namespace: dict[str, Any], lazy_resolver: LazyResolver | None,
             nested_objects: bool = False) -> Any:
    if var.type not in VAR_TYPES:
        raise HydrationError(f"variable {var.key} has unknown type {var.type!r}")
    if var.type == PLAIN:
        return var.value
    try:
        rendered = template.render(var.value, namespace, nested_objects)
    except ExpressionError as exc:
        raise HydrationError(f"variable {var.key} could not be rendered: {exc}") from exc
    if var.type == SPLICE or lazy_resolver is None:
        return rendered
    try:
        return lazy_resolver(var, rendered)
    except Exception as exc:
        raise HydrationError(f"lazy variable {var.key} (code {var.code!r}) failed: {describe(exc)}") from exc
