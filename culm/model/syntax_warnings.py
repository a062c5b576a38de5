"""Syntax warnings of a pipeline tree: templates and conditions that will not work as written.

At run time culm keeps bamboo's behaviour: a ``${...}`` fragment that does not parse is left in
the text as it is (shell inputs such as ``${HOME:-x}`` are common), and a gateway condition that
does not parse fails its gateway. Neither is a validation problem, but a typo should be seen
before a run, so :func:`tree_warnings` names each one with its node id and position.
"""

from __future__ import annotations

import io
import tokenize
import unicodedata
from collections.abc import Iterator
from typing import Any

from culm.data import boolrule, sandbox, template
from culm.errors import ExpressionError, TreeProblem

_PLACEHOLDER = "0"  # what a fragment stands for when a condition's syntax is checked
_RENDERED_TYPES = frozenset({"splice", "lazy"})
_GATEWAYS_WITH_CONDITIONS = frozenset({"ExclusiveGateway", "ConditionalParallelGateway"})
# Distinct fragments one call parses at most (~20 µs each): a tree given to `culm validate` or
# POST /api/v1/validate may hold millions (100,000 took 1.9 s of CPU, every time). Past it the
# rest are not checked, and one warning says how many; a fragment seen before is not parsed again.
MAX_CHECKED_FRAGMENTS = 20_000


class _Checker:
    """Parses each distinct fragment body once, MAX_CHECKED_FRAGMENTS at most, for one call."""

    def __init__(self) -> None:
        self.left = MAX_CHECKED_FRAGMENTS
        self.skipped = 0
        self.seen: dict[str, str | None] = {}

    def problem(self, body: str) -> str | None:
        """Why ``body`` does not parse; None when it parses, or was not checked (counted)."""
        if body in self.seen:
            return self.seen[body]
        if self.left <= 0:
            self.skipped += 1
            return None
        self.left -= 1
        try:
            sandbox.parse(body)
            found = None
        except ExpressionError as exc:
            found = str(exc)
        self.seen[body] = found
        return found


def tree_warnings(tree: Any) -> list[TreeProblem]:
    """List the template fragments and gateway conditions of ``tree`` that do not parse.

    Args:
        tree: A pipeline tree (bamboo's schema); parts that are not well formed are skipped
            (:func:`~culm.model.validator.validate_tree` reports those).

    Returns:
        One warning per fragment or condition, each with ``where`` (the node or pipeline id) and
        ``message`` (the field, the position in its text and why it does not parse).
    """
    found: list[TreeProblem] = []
    check = _Checker()
    pending = [tree]
    while pending:
        pipeline = pending.pop()
        if not isinstance(pipeline, dict):
            continue
        pid = pipeline.get("id") if isinstance(pipeline.get("id"), str) else None
        found += _variables(check, pid, "data input", _field(pipeline.get("data"), "inputs"))
        found += _key_forms(pid, "data input", _field(pipeline.get("data"), "inputs"))
        for nid, node in _items(pipeline.get("activities")):
            if node.get("type") == "SubProcess":
                found += _variables(check, nid, "param", node.get("params"))
                found += _key_forms(nid, "param", node.get("params"))
                pending.append(node.get("pipeline"))
            else:
                found += _variables(check, nid, "component input", _field(node.get("component"), "inputs"))
        for nid, node in _items(pipeline.get("gateways")):
            if node.get("type") in _GATEWAYS_WITH_CONDITIONS:
                found += _conditions(check, nid, node.get("conditions"))
    if check.skipped:
        found.append(TreeProblem(tree.get("id") if isinstance(tree, dict) else None,
                                 f"{check.skipped:,} ${{...}} fragments were not checked for syntax: one check "
                                 f"parses at most {MAX_CHECKED_FRAGMENTS:,} distinct fragments"))
    return found


def _field(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _items(nodes: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(nodes, dict):
        for nid, node in nodes.items():
            if isinstance(nid, str) and isinstance(node, dict):
                yield nid, node


def _key_forms(where: str | None, kind: str, variables: Any) -> list[TreeProblem]:
    """A context key not in Unicode's NFKC form: a ``${...}`` reference is read as a Python name, in
    NFKC form, so no reference reaches it (data.outputs, a splice's source_key and
    update_context_values do). Two keys of one form are refused by the validator instead."""
    if not isinstance(variables, dict):
        return []
    found: list[TreeProblem] = []
    for key in variables:
        if isinstance(key, str) and not key.isascii() and (normal := unicodedata.normalize("NFKC", key)) != key:
            found.append(TreeProblem(where, f"{kind} key {key!r} is not in Unicode's NFKC form ({ascii(key)}): no "
                                            f"${{...}} reference reaches it (Python reads a reference's names in NFKC "
                                            f"form, which is {normal!r} here); data.outputs, a splice's source_key "
                                            "and update_context_values do"))
    return found


def _variables(check: _Checker, where: str | None, kind: str, variables: Any) -> list[TreeProblem]:
    if not isinstance(variables, dict):
        return []
    found: list[TreeProblem] = []
    for key, var in variables.items():
        if not isinstance(var, dict) or var.get("type", "plain") not in _RENDERED_TYPES:
            continue
        if var.get("need_render") is False:
            continue
        for text in template.strings_in(var.get("value")):
            found += (TreeProblem(where, f"{kind} {key}: {msg}") for msg in fragment_problems(text, check))
    return found


def _conditions(check: _Checker, where: str, conditions: Any) -> list[TreeProblem]:
    if not isinstance(conditions, dict):
        return []
    found: list[TreeProblem] = []
    for flow_id, condition in conditions.items():
        text = condition.get("evaluate") if isinstance(condition, dict) else None
        if not isinstance(text, str):
            continue
        found += (TreeProblem(where, f"condition of flow {flow_id}: {msg}") for msg in fragment_problems(text, check))
        # fragments that parse become a value; those that do not stay text, as at run time
        skeleton = template.FRAGMENT.sub(lambda m: m.group(0) if check.problem(m.group(1)) else _PLACEHOLDER, text)
        if boolrule.syntax_problem(skeleton) is not None:
            found.append(TreeProblem(where, f"condition of flow {flow_id} {text!r} is not valid condition "
                                            "syntax; the gateway will fail when it runs"))
    return found


def fragment_problems(text: str, check: _Checker | None = None) -> list[str]:
    """Why each ``${...}`` of ``text`` that will stay text at run time does not parse."""
    check = check or _Checker()
    problems: list[str] = []
    starts = set()
    for match in template.FRAGMENT.finditer(text):
        starts.add(match.start())
        why = check.problem(match.group(1))
        if why is not None:
            problems.append(f"{match.group(0)!r} at position {match.start()} does not parse ({why}); "
                            "it will stay text")
        elif not match.group(1).isascii() and (renamed := _renamed(match.group(1))):
            problems.append(f"{match.group(0)!r} at position {match.start()} names "
                            + ", ".join(f"{name!r} ({ascii(name)}), which reads as {normal!r}" for name, normal in renamed)
                            + ": Python reads names in Unicode's NFKC form, so it reads that key, not one written "
                              "as the name is")
    position = text.find("${")
    while position >= 0:
        if position not in starts:
            problems.append(f"'${{' at position {position} opens no fragment (a fragment holds no "
                            "'$', '{', '}' or '#'); it will stay text")
        position = text.find("${", position + 2)
    return problems


def _renamed(body: str) -> list[tuple[str, str]]:
    """The names in a fragment that are not in NFKC form, each with the name Python reads."""
    try:
        names = [t.string for t in tokenize.generate_tokens(io.StringIO(body).readline) if t.type == tokenize.NAME]
    except (tokenize.TokenError, SyntaxError):  # it parsed (sandbox.parse): not expected
        return []
    return [(name, normal) for name in dict.fromkeys(names)
            if not name.isascii() and (normal := unicodedata.normalize("NFKC", name)) != name]
