"""A bounded evaluator for one Python expression written by an untrusted user.

The evaluator walks the AST itself instead of calling :func:`eval`: every name, attribute,
call and operator goes through a check here, so nothing the expression can reach leads back
to Python internals (:mod:`culm.data.sandbox_guards` parses and checks the text,
:mod:`culm.data.sandbox_eval` walks it, :mod:`culm.data.sandbox_calls` and
:mod:`culm.data.sandbox_format` bound builtins, methods and formatting). Work and memory are bounded *before* an expensive operation runs
(``9**9**9**9`` is refused from the operand sizes, not interrupted), and a deadline is checked
at every step, including every comprehension iteration.

The bounds are the module constants below; change them at runtime or pass :class:`Limits`.
"""

from __future__ import annotations

import ast
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from culm.data.memo import WeightedMemo
from culm.data.sandbox_eval import Evaluator
from culm.data.sandbox_guards import (
    FORBIDDEN_ATTRIBUTES,
    FORBIDDEN_NAMES,
    PARSE_CACHE_NODES,
    PARSE_CACHE_SIZE,
    PARSED,
    SAFE_BUILTINS,
    clip,
    collect_free,
    describe,
    parse_cached,
    render_limited,
)
from culm.data.sandbox_objects import TEXT_DUNDERS, operator_refusal
from culm.errors import ExpressionError, ExpressionLimitError, ExpressionRefusedError

__all__ = [
    "FORBIDDEN_ATTRIBUTES",
    "FORBIDDEN_NAMES",
    "PARSE_CACHE_NODES",
    "PARSE_CACHE_SIZE",
    "SAFE_BUILTINS",
    "ExpressionError",
    "ExpressionLimitError",
    "ExpressionRefusedError",
    "Limits",
    "evaluate",
    "free_names",
    "parse",
    "safe_str",
]

MAX_EXPRESSION_LENGTH = 10_000
MAX_AST_NODES = 2_000
MAX_AST_DEPTH = 100
MAX_INT_DIGITS = 4_000
MAX_SEQUENCE_LENGTH = 1_000_000
MAX_VALUE_SIZE = 10_000_000
MAX_ALLOCATION = 20_000_000
MAX_STEPS = 2_000_000
TIME_LIMIT = 0.5
MAX_FORMAT_WIDTH = 1_000
# Bytes an evaluation may build (an upper estimate, counted before or as values are built, never
# credited back): with the values it is given, the most one evaluation can grow a process by.
MAX_MEMORY = 32_000_000
# Whether templates may do whatever the objects in a context offer: call their methods, run their
# properties, iterate and index them (culm.data.sandbox_objects says what they may do otherwise).
# Objects a component outputs or a lazy variable builds may reach the network, the disk or a
# database (a requests.Session, a client, a file): only a deployment whose templates are written by
# people trusted with the workers' access should set it (``$CULM_TRUST_CONTEXT_OBJECTS=1``).
TRUST_CONTEXT_OBJECTS = os.environ.get("CULM_TRUST_CONTEXT_OBJECTS", "").strip().lower() in ("1", "true", "yes", "on")


_CURRENT_LIMITS: dict[tuple[Any, ...], Limits] = {}


@dataclass(frozen=True, slots=True, eq=False)
class Limits:
    """The bounds one evaluation runs under; ``Limits.current()`` reads the module constants.

    Compared and hashed by identity (it is part of every remembered evaluation's key, and a
    field-by-field hash per evaluation costs more than the lookup): ``current()`` hands out one
    instance per set of values, so equal limits made elsewhere only miss the memo, never hit a
    wrong entry.
    """

    max_length: int
    max_nodes: int
    max_depth: int
    max_int_digits: int
    max_sequence: int
    max_value_size: int
    max_allocation: int
    max_steps: int
    time_limit: float
    max_format_width: int
    max_memory: int
    trust_objects: bool = False

    @classmethod
    def current(cls) -> Limits:
        """Return limits built from the module constants as they are now (one instance per set of
        values: every evaluation asks, and building a frozen dataclass costs more than looking)."""
        values = (
            MAX_EXPRESSION_LENGTH, MAX_AST_NODES, MAX_AST_DEPTH, MAX_INT_DIGITS, MAX_SEQUENCE_LENGTH,
            MAX_VALUE_SIZE, MAX_ALLOCATION, MAX_STEPS, TIME_LIMIT, MAX_FORMAT_WIDTH, MAX_MEMORY,
            bool(TRUST_CONTEXT_OBJECTS),
        )  # fmt: skip
        known = _CURRENT_LIMITS.get(values)
        if known is None:
            if len(_CURRENT_LIMITS) >= 16:
                _CURRENT_LIMITS.clear()
            known = _CURRENT_LIMITS[values] = cls(*values)
        return known

    @property
    def max_int_bits(self) -> int:
        return int(self.max_int_digits * math.log2(10)) + 1


def evaluate(
    expr: str, names: Mapping[str, Any], *, limits: Limits | None = None, deadline: float | None = None
) -> Any:
    """Evaluate one expression against ``names`` inside the sandbox.

    Args:
        expr: The expression text (surrounding whitespace is ignored).
        names: Values the expression may refer to by name; they shadow the safe builtins.
        limits: Bounds to apply; defaults to the module constants.
        deadline: An absolute ``render_clock()`` instant (this thread's CPU time) the evaluation must finish by, for
            callers that share one time budget between several expressions.

    Returns:
        The value of the expression.

    Raises:
        ExpressionLimitError: The expression went over a bound.
        ExpressionError: The expression is not valid, uses a forbidden construct or failed.
    """
    limits = limits or Limits.current()
    tree = parse(expr, limits)
    key = _memo_key(expr, tree, names, limits)
    if key is not None:
        hit = _memo.get(key, _ABSENT)
        if hit is not _ABSENT:
            return hit
    ev = Evaluator(names, limits, deadline)
    try:
        value = ev.eval(tree.body, {})
    except ExpressionRefusedError as exc:
        raise ExpressionRefusedError(f"{exc} (in expression {clip(expr)!r})") from None
    except ExpressionError:
        raise
    except (RecursionError, MemoryError):
        raise ExpressionLimitError(f"expression {clip(expr)!r} needs too much stack or memory") from None
    except Exception as exc:
        raise ExpressionError(f"{describe(exc)} in expression {clip(expr)!r}") from exc
    if key is not None and type(value) in _MEMO_TYPES and _small(value):
        if len(_memo) >= MEMO_SIZE:
            _memo.clear()
        _memo[key] = value
    return value


# Results of evaluations whose names are all small immutable scalars (str, int, bool, None), by
# (expression, limits, those names' types and values): an expression is a pure function of them (every builtin and
# method the sandbox allows is deterministic), and templates repeat across nodes and runs.
# Floats are not part of keys (-0.0 equals 0.0 but renders differently); only immutable results
# are kept, so a hit can be handed out again.
MEMO_SIZE = 4_096
MEMO_MAX_TEXT = 1_024
_memo: dict[tuple[Any, ...], Any] = {}
_ABSENT = object()
_KEY_TYPES = (str, int, bool, type(None))
_MEMO_TYPES = frozenset({str, int, float, bool, type(None)})
# Names per expression, bounded by how many names they hold in all (an expression loads up to
# 1,000 distinct ones: a count of entries alone let 1,024 of them hold 100 MB).
NAMES_CACHE_NAMES = 50_000
_loaded_names: WeightedMemo[str, tuple[str, ...]] = WeightedMemo(PARSE_CACHE_SIZE, NAMES_CACHE_NAMES)
_free_names_memo: WeightedMemo[str, frozenset[str]] = WeightedMemo(PARSE_CACHE_SIZE, NAMES_CACHE_NAMES)


def _small(value: Any) -> bool:
    if type(value) is str:
        return len(value) <= MEMO_MAX_TEXT
    if type(value) is int:
        return value.bit_length() // 8 <= MEMO_MAX_TEXT
    return True


def _loaded(expr: str, tree: ast.Expression) -> tuple[str, ...]:
    """Every name ``expr`` (parsed as ``tree``) loads from outside its comprehensions, safe
    builtins included (a caller's value shadows them); once per expression."""
    loaded = _loaded_names.data.get(expr)
    if loaded is None:
        found: set[str] = set()
        collect_free(tree.body, frozenset(), found)
        loaded = _loaded_names.keep(expr, tuple(sorted(found)), len(found) + 1)
    return loaded


def _memo_key(expr: str, tree: ast.Expression, names: Mapping[str, Any], limits: Limits) -> tuple[Any, ...] | None:
    loaded = _loaded(expr, tree)
    # The key's text (expression and values) stays under MEMO_MAX_TEXT in all, and so does the
    # result (_small): the memo holds at most MEMO_SIZE x ~2-3 KiB, whatever templates render.
    budget = MEMO_MAX_TEXT - len(expr)
    parts: list[Any] = [expr, limits]
    for name in loaded:
        value = names.get(name, _ABSENT)
        kind = type(value)
        if kind is str:
            budget -= len(value)
        elif kind is int:
            budget -= value.bit_length() // 8
        elif value is not _ABSENT and kind not in _KEY_TYPES:
            return None
        parts.append(kind)
        parts.append(value)
    return tuple(parts) if budget >= 0 else None


def parse(expr: str, limits: Limits | None = None) -> ast.Expression:
    """Parse and statically check ``expr``; results are cached.

    Raises:
        ExpressionLimitError: The text or its syntax tree is too large.
        ExpressionError: Syntax error or a forbidden construct.
    """
    lim = limits or Limits.current()
    if not isinstance(expr, str):
        raise ExpressionError(f"an expression must be a string, not {type(expr).__name__}")
    if len(expr) > lim.max_length:
        raise ExpressionLimitError(f"expression is {len(expr)} characters long, over {lim.max_length}")
    return parse_cached(expr.strip(), lim.max_nodes, lim.max_depth, lim.max_int_digits)


def free_names(expr: str) -> frozenset[str]:
    """Return the names ``expr`` loads from outside (not comprehension locals, not safe builtins)."""
    names = _free_names_memo.data.get(expr)
    if names is None:
        names = frozenset(_loaded(expr, parse(expr))) - SAFE_BUILTINS
        _free_names_memo.keep(expr, names, len(names) + 1)
    return names


def safe_str(value: Any, limit: int | None = None) -> str:
    """``str(value)``, refused when the text would be longer than ``limit`` characters.

    Raises:
        ExpressionLimitError: The value is too big to turn into text.
        ExpressionRefusedError: The value, or one it holds, would run its class's own ``__str__``,
            ``__repr__`` or ``__format__`` (unless ``TRUST_CONTEXT_OBJECTS``).
    """
    return render_limited(value, MAX_SEQUENCE_LENGTH if limit is None else limit,
                          None if TRUST_CONTEXT_OBJECTS else _plain_text)


def _plain_text(value: Any) -> None:
    refusal = operator_refusal(value, TEXT_DUNDERS, "turning into text")
    if refusal is not None:
        raise refusal


_parsed = PARSED  # the memo of parsed expressions, for callers that inspect it
