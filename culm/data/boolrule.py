"""Gateway conditions: bamboo's boolrule syntax, parsed and evaluated here without ``eval``.

A condition is comparisons joined by ``and``/``or``, evaluated strictly left to right with
short-circuit and no precedence: ``false and x or true`` is false, because evaluation stops at
the first ``and`` after a false result. There is no context: a bare identifier evaluates to its
own name as a string (templates have already been rendered into the text).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from culm.data import sandbox, template
from culm.data.context import deformat
from culm.data.memo import WeightedMemo
from culm.errors import ConditionSyntaxError, ExpressionError, ExpressionLimitError

MAX_CONDITION_LENGTH = 10_000
MAX_CONDITION_DEPTH = 50
MAX_NUMBER_DIGITS = 4_000

_IDENT_PART = r"(?:\$\{)?_?[A-Za-z][A-Za-z0-9_]*\}?"
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<real>[+-]?(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?\d+[eE]-\d+)
    | (?P<int>[+-]?\d+)(?:[eE]\+?(?P<exp>\d+))?
    | "(?P<dq>[^"\r\n]*)" | '(?P<sq>[^'\r\n]*)'
    | (?P<sym>==|!=|>=|<=|<|>|\(|\)|,)
    | (?P<word>"""
    + _IDENT_PART
    + r"(?:\."
    + _IDENT_PART
    + r""")*)
    )""",
    re.VERBOSE,
)
_WORD_OPERATORS = frozenset({"in", "notin", "issuperset", "notissuperset"})
_WORDS = _WORD_OPERATORS | {"and", "or"}
_ESCAPES = {r"\t": "\t", r"\n": "\n", r"\f": "\f", r"\r": "\r"}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "value", "op", "join", "(", ")", ","
    value: Any


@dataclass(frozen=True, slots=True)
class _Comparison:
    left: Any
    op: str
    right: Any


@dataclass(frozen=True, slots=True)
class _Chain:
    items: tuple[_Comparison | _Chain, ...]
    joins: tuple[str, ...]


def evaluate_condition(expr: str) -> bool:
    """Evaluate an already rendered condition.

    Raises:
        ConditionSyntaxError: ``expr`` is not valid condition syntax.
        ExpressionLimitError: ``expr`` is too long or nested too deeply.
        ExpressionError: The comparison itself failed (for example ``"a" < 1``).
    """
    if not isinstance(expr, str):
        raise ConditionSyntaxError(f"condition must be a string, not {type(expr).__name__}")
    if len(expr) > MAX_CONDITION_LENGTH:
        raise ExpressionLimitError(f"condition is {len(expr)} characters long, over {MAX_CONDITION_LENGTH}")
    if expr.strip() == "*":
        return True
    try:
        return _run(_parse(expr))
    except (TypeError, ValueError) as exc:
        raise ExpressionError(f"condition {_clip(expr)!r} cannot be evaluated: {exc}") from exc


def syntax_problem(expr: str) -> str | None:
    """Why ``expr`` (an already rendered condition) is not valid syntax; None when it is."""
    if not isinstance(expr, str):
        return f"a condition must be a string, not {type(expr).__name__}"
    if len(expr) > MAX_CONDITION_LENGTH:
        return f"longer than {MAX_CONDITION_LENGTH} characters"
    if expr.strip() == "*":
        return None
    try:
        _parse(expr)
    except ExpressionError as exc:
        return str(exc)
    return None


def evaluate_gateway_condition(expr: str, namespace: Mapping[str, Any], nested_objects: bool = False) -> bool:
    """Render ``expr`` with ``namespace`` (bare names), then evaluate it as a condition.

    ``nested_objects`` (the engine's ``Settings.render_nested_objects``, bamboo's
    ``ENABLE_RENDER_OBJ_BY_MAKO_STRING``): a condition that is one ``${d['k'][0]}`` fragment takes
    the value it points at, as a condition that is one ``${name}`` does.

    Raw ``\\n``, ``\\r`` and ``\\t`` in string values are escaped first, as bamboo does, so a
    multi-line value stays inside its quotes; the string literal turns them back.
    """
    if "${" not in expr:
        return evaluate_condition(expr)
    # Only the values this condition names: found probing (session 23), each condition escaped
    # every value of the namespace (what all of the gateway's conditions name) before looking at
    # its own text, where no clock is read; 900 conditions ``1 == 2`` in front of 100 naming a
    # variable of 1 MB of lines each held the engine for over ten minutes.
    # (A value named like a safe builtin shadows it, and references() leaves those out.)
    named = {deformat(key) for key in template.references(expr)} | sandbox.SAFE_BUILTINS
    escaped = {name: _escape(namespace[name]) for name in named if name in namespace}
    rendered, parts = template.render_parts(expr, escaped, nested_objects)
    if not isinstance(rendered, str):  # the whole condition is one variable's value
        rendered = sandbox.safe_str(rendered, MAX_CONDITION_LENGTH)
        parts = [("", expr, rendered)]
    if rendered != expr and not _whole(expr, parts) and syntax_problem(rendered) is None:
        _check_spliced(parts)
    return evaluate_condition(rendered)


def _check_spliced(parts: list[tuple[str, str, str]]) -> None:
    """Refuse a condition whose variables' values would change its meaning, not only its operands.

    A value is spliced into the condition's text: ``x == x or y`` as ``${name}`` turned
    ``${name} == 'bob'`` into a condition that always holds, and ``x' == 'x' or 'y`` did the same to
    ``'${name}' == 'bob'``. A fragment standing alone must render to one operand (a value or a
    parenthesised list), and one inside quotes must not hold its quote character. ``parts``:
    (literal before, fragment, the text it became) of each fragment, in order.
    """
    quote = ""
    for literal, fragment, text in parts:
        quote = _quote_after(literal, quote)
        if text == fragment:
            continue  # not rendered: the condition reads it as a name, as it reads any identifier
        if quote:
            if quote in text:
                raise ConditionSyntaxError(
                    f"the value of {fragment} ({_clip(text)!r}) holds the quote {quote} that encloses it "
                    "in the condition: it would end the quoted text and add to the condition")
        elif not _one_operand(text):
            raise ConditionSyntaxError(
                f"the value of {fragment} ({_clip(text)!r}) is not one operand: a condition takes a "
                "variable's value as one value or list, never as operators or further comparisons")


def _whole(expr: str, parts: list[tuple[str, str, str]]) -> bool:
    """Whether the condition is one fragment alone (``${cond}``): its author gave a variable the
    whole condition, as bamboo allows, so its value is read as a condition, not as an operand."""
    return len(parts) == 1 and expr.strip() == parts[0][1]


def _quote_after(text: str, quote: str) -> str:
    """The quote open after ``text``, when ``quote`` was open before it ("" for none)."""
    for char in text:
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
    return quote


def _one_operand(text: str) -> bool:
    if text.isdecimal() or (text.isidentifier() and text.lower() not in _WORDS):
        return True  # the common value: no tokens to make
    try:
        tokens = _tokenize(text)
        parser = _Parser(tokens)
        parser.operand()
    except (_Fail, ExpressionError):
        return False
    return parser.pos == len(tokens)


def _escape(value: Any) -> Any:
    if not issubclass(type(value), str):
        return value
    return value.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _clip(text: str) -> str:
    return text if len(text) <= 200 else text[:197] + "..."


# ---------------------------------------------------------------- parsing


class _Fail(Exception):
    """Internal: this alternative does not match here."""


# Parsed conditions, bounded by their tokens in all: 512 distinct conditions of 8 KB held 90 MB
# when only entries were counted.
PARSE_CACHE_TOKENS = 50_000
_PARSED: WeightedMemo[str, _Chain] = WeightedMemo(512, PARSE_CACHE_TOKENS)


def _parse(expr: str) -> _Chain:
    chain = _PARSED.data.get(expr)
    if chain is not None:
        return chain
    tokens = _tokenize(expr)
    parser = _Parser(tokens)
    try:
        chain = parser.chain(0)
        if parser.pos != len(tokens):
            raise _Fail
    except _Fail:
        raise ConditionSyntaxError(f"{_clip(expr)!r} is not valid condition syntax") from None
    return _PARSED.keep(expr, chain, len(tokens) + 1)


def _tokenize(expr: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    end = len(expr.rstrip())
    while pos < end:
        match = _TOKEN.match(expr, pos)
        if match is None or match.end() == pos:
            raise ConditionSyntaxError(f"{_clip(expr)!r} is not valid condition syntax (at {pos})")
        tokens.append(_token(match))
        pos = match.end()
    return tokens


def _token(match: re.Match[str]) -> _Token:
    if match.group("real") is not None:
        return _Token("value", float(match.group("real")))
    if match.group("int") is not None:
        return _Token("value", _integer(match.group("int"), match.group("exp")))
    for quoted in ("dq", "sq"):
        if match.group(quoted) is not None:
            text = re.sub(r"\\[tnfr]", lambda m: _ESCAPES[m.group(0)], match.group(quoted))
            return _Token("value", text)
    sym = match.group("sym")
    if sym is not None:
        return _Token(sym if sym in "()," else "op", sym)
    word = match.group("word")
    lowered = word.lower()
    if lowered in _WORD_OPERATORS:
        return _Token("op", lowered)
    if lowered in ("and", "or"):
        return _Token("join", lowered)
    if lowered in ("true", "false"):
        return _Token("value", lowered == "true")
    return _Token("value", word)  # an identifier stands for its own name


def _integer(digits: str, exponent: str | None) -> int:
    if exponent is not None and len(exponent) > 5:
        raise ExpressionLimitError("exponent in condition is longer than 5 digits")
    power = int(exponent or 0)
    if len(digits) + power > MAX_NUMBER_DIGITS:
        raise ExpressionLimitError(f"number in condition is longer than {MAX_NUMBER_DIGITS} digits")
    return int(digits) * 10**power


class _Parser:
    __slots__ = ("tokens", "pos")

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos].kind if self.pos < len(self.tokens) else None

    def take(self, kind: str) -> Any:
        if self.peek() != kind:
            raise _Fail
        self.pos += 1
        return self.tokens[self.pos - 1].value

    def chain(self, depth: int) -> _Chain:
        items = [self.condition(depth)]
        joins: list[str] = []
        while self.peek() == "join":
            joins.append(self.take("join"))
            items.append(self.condition(depth))
        return _Chain(tuple(items), tuple(joins))

    def condition(self, depth: int) -> _Comparison | _Chain:
        if self.peek() != "(":
            return self.comparison()
        saved = self.pos
        try:
            return self.comparison()  # "(a, b) in c" starts with a parenthesis too
        except _Fail:
            self.pos = saved
        if depth + 1 > MAX_CONDITION_DEPTH:
            raise ExpressionLimitError(f"condition nests parentheses more than {MAX_CONDITION_DEPTH} deep")
        self.take("(")
        inner = self.chain(depth + 1)
        self.take(")")
        return inner

    def comparison(self) -> _Comparison:
        left = self.operand()
        op = self.take("op")
        return _Comparison(left, op, self.operand())

    def operand(self) -> Any:
        if self.peek() != "(":
            return self.take("value")
        self.take("(")
        items = [self.take("value")]
        while self.peek() == ",":
            self.take(",")
            items.append(self.take("value"))
        self.take(")")
        return tuple(items)  # a tuple so the parsed condition stays immutable in the cache


# ---------------------------------------------------------------- evaluation


def _run(node: _Comparison | _Chain) -> bool:
    if isinstance(node, _Comparison):
        return _compare(node.left, node.op, node.right)
    passed = False
    for index, item in enumerate(node.items):
        if index:
            join = node.joins[index - 1]
            if join == "or" and passed:
                return True
            if join == "and" and not passed:
                return False
        passed = _run(item)
    return passed


def _compare(left: Any, op: str, right: Any) -> bool:
    left = list(left) if isinstance(left, tuple) else left
    right = list(right) if isinstance(right, tuple) else right
    if op in ("in", "notin"):
        if isinstance(right, list):
            right = right + _converted_like(left, right)
        return (left in right) is (op == "in")
    if op in ("issuperset", "notissuperset"):
        # A string is one item, not a set of characters.
        lset = set([left] if isinstance(left, str) else left)
        rset = set([right] if isinstance(right, str) else right)
        return lset.issuperset(rset) is (op == "issuperset")
    left, right = _coerce(left, right)
    return bool(_OPS[op](left, right))


def _converted_like(left: Any, items: list[Any]) -> list[Any]:
    """Copies of ``items`` converted to ``left``'s type (int or str), where possible."""
    convert = int if isinstance(left, int) else str if isinstance(left, str) else None
    if convert is None:
        return []
    out = []
    for item in items:
        try:
            out.append(convert(item))
        except (TypeError, ValueError, OverflowError):
            continue
    return out


def _coerce(left: Any, right: Any) -> tuple[Any, Any]:
    # All or nothing, as in boolrule: a failed int conversion also skips the str step.
    try:
        if isinstance(left, int):
            right = int(right)
        elif isinstance(right, int):
            left = int(left)
        if isinstance(left, str):
            right = str(right)
        elif isinstance(right, str):
            left = str(left)
    except (TypeError, ValueError, OverflowError):
        pass
    return left, right


_OPS = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}
