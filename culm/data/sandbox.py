"""A bounded evaluator for one Python expression written by an untrusted user.

The evaluator walks the AST itself instead of calling :func:`eval`: every name, attribute,
call and operator goes through a check here, so nothing the expression can reach leads back
to Python internals. Work and memory are bounded *before* an expensive operation runs
(``9**9**9**9`` is refused from the operand sizes, not interrupted), and a deadline is checked
at every step, including every comprehension iteration.

The bounds are the module constants below; change them at runtime or pass :class:`Limits`.
"""

from __future__ import annotations

import ast
import itertools
import math
import operator
import string
import time
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from culm.errors import ExpressionError, ExpressionLimitError

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
PARSE_CACHE_SIZE = 1_024

SAFE_BUILTINS: frozenset[str] = frozenset(
    "True False None bool int float str list tuple dict set abs round pow sum min max len range "
    "slice enumerate zip sorted reversed all any".split()
)

# Never resolvable (only the caller's names and SAFE_BUILTINS are); listed so the error says
# "forbidden" instead of "unknown". A caller's own variable may still use one of these names.
FORBIDDEN_NAMES: frozenset[str] = frozenset(
    "getattr setattr delattr hasattr eval exec compile open globals locals vars type dir help input "
    "breakpoint memoryview object super classmethod staticmethod property print exit quit id hash "
    "iter next callable isinstance issubclass bytearray bytes chr ascii repr format frozenset map "
    "filter divmod".split()
)

# Attribute names that reach interpreter internals or the operating system on some object.
FORBIDDEN_ATTRIBUTES: frozenset[str] = frozenset(
    "mro gi_frame gi_code gi_yieldfrom cr_frame cr_code cr_await ag_frame ag_code f_globals f_locals "
    "f_builtins f_back f_code tb_frame tb_next func_globals func_code func_closure im_func im_self "
    "os sys subprocess shutil ctypes socket builtins modules environ popen popen2 popen3 system fork "
    "forkpty kill spawn spawnl spawnv execv execve execl execvp".split()
)

_SAFE_METHODS: dict[str, frozenset[str]] = {
    "str": frozenset(
        "capitalize casefold center count endswith expandtabs find format format_map index isalnum "
        "isalpha isascii isdecimal isdigit isidentifier islower isnumeric isprintable isspace istitle "
        "isupper join ljust lower lstrip partition removeprefix removesuffix replace rfind rindex rjust "
        "rpartition rsplit rstrip split splitlines startswith strip swapcase title upper zfill".split()
    ),
    "int": frozenset({"bit_length", "bit_count", "as_integer_ratio"}),
    "float": frozenset({"is_integer", "as_integer_ratio"}),
    "list": frozenset({"count", "index", "copy"}),
    "tuple": frozenset({"count", "index"}),
    "dict": frozenset({"get", "keys", "values", "items", "copy"}),
    "set": frozenset(
        "union intersection difference symmetric_difference issubset issuperset isdisjoint copy".split()
    ),
}

_ALLOWED_NODES = frozenset(
    {ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Store, ast.BinOp, ast.UnaryOp, ast.BoolOp}
    | {ast.Compare, ast.IfExp, ast.Subscript, ast.Slice, ast.Attribute, ast.Call, ast.keyword}
    | {ast.List, ast.Tuple, ast.Set, ast.Dict, ast.ListComp, ast.SetComp, ast.DictComp}
    | {ast.GeneratorExp, ast.comprehension, ast.JoinedStr, ast.FormattedValue}
    | {ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift}
    | {ast.BitOr, ast.BitXor, ast.BitAnd, ast.UAdd, ast.USub, ast.Not, ast.Invert, ast.And, ast.Or}
    | {ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot, ast.In, ast.NotIn}
)
_NODE_LABELS = {
    ast.Lambda: "lambda",
    ast.NamedExpr: "assignment expression (:=)",
    ast.Starred: "starred expression (*x)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield from",
    ast.MatMult: "the @ operator",
}
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
    ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.BitOr: operator.or_,
    ast.BitXor: operator.xor, ast.BitAnd: operator.and_,
}  # fmt: skip
_UNARYOPS: dict[type, Callable[[Any], Any]] = {
    ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_, ast.Invert: operator.invert,
}  # fmt: skip
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}  # fmt: skip
_CONTAINERS = (list, tuple, set, frozenset, dict)
_SIZED = (str, bytes, list, tuple, set, frozenset, dict)
_SCALAR_SIZE = 24
_PER_FIELD_SLACK = 400  # a float rendered with %f can take ~320 characters


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

    @classmethod
    def current(cls) -> Limits:
        """Return limits built from the module constants as they are now (one instance per set of
        values: every evaluation asks, and building a frozen dataclass costs more than looking)."""
        values = (
            MAX_EXPRESSION_LENGTH, MAX_AST_NODES, MAX_AST_DEPTH, MAX_INT_DIGITS, MAX_SEQUENCE_LENGTH,
            MAX_VALUE_SIZE, MAX_ALLOCATION, MAX_STEPS, TIME_LIMIT, MAX_FORMAT_WIDTH,
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
        deadline: An absolute ``time.monotonic()`` instant the evaluation must finish by, for
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
    ev = _Evaluator(names, limits, deadline)
    try:
        value = ev.eval(tree.body, {})
    except ExpressionError:
        raise
    except (RecursionError, MemoryError):
        raise ExpressionLimitError(f"expression {_clip(expr)!r} needs too much stack or memory") from None
    except Exception as exc:
        raise ExpressionError(f"{_describe(exc)} in expression {_clip(expr)!r}") from exc
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
_loaded_names: dict[str, tuple[str, ...]] = {}


def _small(value: Any) -> bool:
    if type(value) is str:
        return len(value) <= MEMO_MAX_TEXT
    if type(value) is int:
        return value.bit_length() // 8 <= MEMO_MAX_TEXT
    return True


def _loaded(expr: str, tree: ast.Expression) -> tuple[str, ...]:
    """Every name ``expr`` (parsed as ``tree``) loads from outside its comprehensions, safe
    builtins included (a caller's value shadows them); once per expression."""
    loaded = _loaded_names.get(expr)
    if loaded is None:
        if len(_loaded_names) >= PARSE_CACHE_SIZE:
            _loaded_names.clear()
        found: set[str] = set()
        _collect_free(tree.body, frozenset(), found)
        loaded = _loaded_names[expr] = tuple(sorted(found))
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
    return _parse_cached(expr.strip(), lim.max_nodes, lim.max_depth, lim.max_int_digits)


def free_names(expr: str) -> frozenset[str]:
    """Return the names ``expr`` loads from outside (not comprehension locals, not safe builtins)."""
    return _free_names_cached(expr)


@lru_cache(maxsize=PARSE_CACHE_SIZE)
def _free_names_cached(expr: str) -> frozenset[str]:
    return frozenset(_loaded(expr, parse(expr))) - SAFE_BUILTINS


def safe_str(value: Any, limit: int | None = None) -> str:
    """``str(value)``, refused when the text would be longer than ``limit`` characters.

    Raises:
        ExpressionLimitError: The value is too big to turn into text.
    """
    if isinstance(value, str):
        return value
    limit = MAX_SEQUENCE_LENGTH if limit is None else limit
    if _size_of(value, limit, lambda: None) > limit:
        raise ExpressionLimitError(
            f"{type(value).__name__} value too large to render (over {limit} characters)"
        )
    return str(value)


# ---------------------------------------------------------------- static checks


@lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse_cached(expr: str, max_nodes: int, max_depth: int, max_int_digits: int) -> ast.Expression:
    try:
        tree = ast.parse(expr, mode="eval")
    except (RecursionError, MemoryError):
        raise ExpressionLimitError(f"expression {_clip(expr)!r} is nested too deeply") from None
    except (SyntaxError, ValueError) as exc:
        raise ExpressionError(f"invalid expression {_clip(expr)!r}: {getattr(exc, 'msg', exc)}") from None
    _check_tree(tree, max_nodes, max_depth, max_int_digits)
    return tree


def _check_tree(tree: ast.Expression, max_nodes: int, max_depth: int, max_int_digits: int) -> None:
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > max_nodes:
            raise ExpressionLimitError(f"expression has more than {max_nodes} syntax nodes")
        if depth > max_depth:
            raise ExpressionLimitError(f"expression is nested more than {max_depth} levels deep")
        _check_node(node, max_int_digits)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _check_node(node: ast.AST, max_int_digits: int) -> None:
    kind = type(node)
    if kind not in _ALLOWED_NODES:
        raise ExpressionError(f"{_NODE_LABELS.get(kind, kind.__name__)} is not allowed in expressions")
    if kind is ast.Name:
        _check_name(node.id)  # type: ignore[attr-defined]
    elif kind is ast.Attribute:
        _check_attribute_name(node.attr)  # type: ignore[attr-defined]
    elif kind is ast.Constant:
        _check_constant(node.value, max_int_digits)  # type: ignore[attr-defined]
    elif kind is ast.keyword and node.arg is None:  # type: ignore[attr-defined]
        raise ExpressionError("**keyword unpacking is not allowed in expressions")
    elif kind is ast.Dict and None in node.keys:  # type: ignore[attr-defined]
        raise ExpressionError("** unpacking is not allowed in dict displays")
    elif kind is ast.comprehension:
        if node.is_async:  # type: ignore[attr-defined]
            raise ExpressionError("async comprehensions are not allowed")
        _check_target(node.target)  # type: ignore[attr-defined]


def _check_name(name: str) -> None:
    # Single-underscore names stay usable because bamboo contexts hold keys like ``_loop``;
    # they resolve only from the caller's names, never from Python itself.
    if name.startswith("__"):
        raise ExpressionError(f"name {name!r} is forbidden (double underscore)")


def _check_attribute_name(attr: str) -> None:
    if attr.startswith("_"):
        raise ExpressionError(f"attribute {attr!r} is forbidden (leading underscore)")
    if attr in FORBIDDEN_ATTRIBUTES:
        raise ExpressionError(f"attribute {attr!r} is forbidden")


def _check_constant(value: Any, max_int_digits: int) -> None:
    if value is None or isinstance(value, str | bool | float | complex):
        return
    if isinstance(value, int):
        if _int_digits(value) > max_int_digits:
            raise ExpressionLimitError(f"integer literal longer than {max_int_digits} digits")
        return
    raise ExpressionError(f"{type(value).__name__} literals are not allowed")


def _check_target(target: ast.AST) -> None:
    if isinstance(target, ast.Name):
        return
    if isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            _check_target(element)
        return
    raise ExpressionError(f"a comprehension may only assign to plain names, not {type(target).__name__}")


def _collect_free(node: ast.AST, bound: frozenset[str], found: set[str]) -> None:
    if isinstance(node, ast.Name):
        if isinstance(node.ctx, ast.Load) and node.id not in bound:
            found.add(node.id)
        return
    if not isinstance(node, _COMPREHENSIONS):
        for child in ast.iter_child_nodes(node):
            _collect_free(child, bound, found)
        return
    inner = bound
    for index, gen in enumerate(node.generators):
        # The first iterable is evaluated in the enclosing scope, as in Python.
        _collect_free(gen.iter, inner if index else bound, found)
        inner = inner | {n.id for n in ast.walk(gen.target) if isinstance(n, ast.Name)}
        for cond in gen.ifs:
            _collect_free(cond, inner, found)
    results = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
    for result in results:
        _collect_free(result, inner, found)


# ---------------------------------------------------------------- sizes


def _int_digits(value: int) -> int:
    return value.bit_length() * 30103 // 100000 + 1


def _size_of(
    value: Any, limit: int, tick: Callable[[], None], known: Mapping[int, tuple[Any, int]] | None = None
) -> int:
    """Approximate ``len(str(value))``, counting shared nested containers once per occurrence.

    Stops soon after ``limit`` is passed, so the cost is bounded by the limit. ``known`` maps
    ``id(container)`` to ``(container, size)`` for containers already measured.
    """
    if not isinstance(value, _CONTAINERS):
        return _scalar_size(value)
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        total += 2 + 2 * len(item)
        for child in itertools.chain.from_iterable(item.items()) if isinstance(item, dict) else item:
            if not isinstance(child, _CONTAINERS):
                total += _scalar_size(child)
                continue
            cached = known.get(id(child)) if known else None
            if cached is not None and cached[0] is child:
                total += cached[1]
            else:
                stack.append(child)
        if total > limit:
            return total
        tick()
    return total


def _scalar_size(value: Any) -> int:
    kind = type(value)
    if kind is str or kind is bytes:
        return len(value) + 2
    if kind is int or kind is bool:
        return _int_digits(value) + 1
    return _SCALAR_SIZE


def _describe(exc: BaseException) -> str:
    # str(exc) can repr an arbitrarily large argument, so each argument is clipped first.
    parts = [_clip(arg if isinstance(arg, str) else _short_repr(arg), 160) for arg in exc.args[:3]]
    return f"{type(exc).__name__}: {', '.join(parts)}" if parts else type(exc).__name__


def _short_repr(value: Any) -> str:
    if _size_of(value, 400, lambda: None) > 400:
        return f"<{type(value).__name__}>"
    return repr(value)


def _clip(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _opaque(obj: Any) -> bool:
    """True for objects whose attributes must stay out of reach (modules, types, callables, ...)."""
    return callable(obj) or isinstance(obj, types.ModuleType) or type(obj).__module__ == "builtins"


def _method_kind(obj: Any) -> str | None:
    for kinds, name in ((str, "str"), (int, "int"), (float, "float"), (list, "list"), (tuple, "tuple")):
        if isinstance(obj, kinds):
            return name
    if isinstance(obj, dict):
        return "dict"
    if isinstance(obj, set | frozenset):
        return "set"
    return None


def _user_method(func: Any) -> bool:
    return (
        isinstance(func, types.MethodType)
        and isinstance(func.__func__, types.FunctionType)
        and not isinstance(func.__self__, type | types.ModuleType)
    )


# ---------------------------------------------------------------- callables handed to expressions


class _Builtin:
    """A safe builtin as the expression sees it; calls go through the evaluator's checks."""

    __slots__ = ("_ev", "_name", "_fn")

    def __init__(self, ev: _Evaluator, name: str, fn: Callable[..., Any]) -> None:
        self._ev, self._name, self._fn = ev, name, fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._ev.tick()
        return self._ev.built(self._fn(*args, **kwargs))

    def __repr__(self) -> str:
        return f"<builtin {self._name}>"


class _BoundMethod:
    """A whitelisted method of a str/list/dict/... value; size-sensitive ones are pre-checked."""

    __slots__ = ("_ev", "_obj", "_name")

    def __init__(self, ev: _Evaluator, obj: Any, name: str) -> None:
        self._ev, self._obj, self._name = ev, obj, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ev.call_method(self._obj, self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<method {type(self._obj).__name__}.{self._name}>"


# ---------------------------------------------------------------- the evaluator


class _Evaluator:
    __slots__ = ("names", "lim", "deadline", "steps", "allocated", "builtins", "sizes")

    def __init__(self, names: Mapping[str, Any], lim: Limits, deadline: float | None) -> None:
        self.names = names
        self.lim = lim
        own = time.monotonic() + lim.time_limit
        self.deadline = own if deadline is None else min(own, deadline)
        self.steps = 0
        self.allocated = 0
        self.builtins: dict[str, Any] = {}
        self.sizes: dict[int, tuple[Any, int]] = {}

    # -- accounting

    def tick(self) -> None:
        self.steps += 1
        if self.steps > self.lim.max_steps:
            raise ExpressionLimitError(f"expression took more than {self.lim.max_steps} steps")
        if not self.steps & 31:  # reading the clock costs more than a step
            self.check_clock()

    def check_clock(self) -> None:
        if time.monotonic() > self.deadline:
            raise ExpressionLimitError(f"expression ran longer than {self.lim.time_limit} seconds")

    def size(self, value: Any) -> int:
        if isinstance(value, _CONTAINERS) and len(value) >= 64:
            cached = self.sizes.get(id(value))
            if cached is not None and cached[0] is value:
                return cached[1]
            result = _size_of(value, self.lim.max_value_size, self.check_clock, self.sizes)
            self.sizes[id(value)] = (value, result)  # the reference keeps the id from being reused
            return result
        return _size_of(value, self.lim.max_value_size, self.check_clock, self.sizes)

    def charge(self, amount: int) -> None:
        self.allocated += amount
        if self.allocated > self.lim.max_allocation:
            raise ExpressionLimitError(f"expression built more than {self.lim.max_allocation} units of data")

    def ensure_length(self, length: int, what: str) -> None:
        if length > self.lim.max_sequence:
            raise ExpressionLimitError(f"{what} would be {length} long, over {self.lim.max_sequence}")

    def ensure_size(self, size: int, what: str) -> None:
        if size > self.lim.max_value_size:
            raise ExpressionLimitError(f"{what} would be too large (size {size} > {self.lim.max_value_size})")

    def built(self, value: Any) -> Any:
        """Check and charge a freshly built value."""
        if isinstance(value, _SIZED):
            self.ensure_length(len(value), f"{type(value).__name__} result")
            size = self.size(value)
            self.ensure_size(size, f"{type(value).__name__} result")
            self.charge(size)
        return value

    # -- dispatch

    def eval(self, node: ast.AST, scope: dict[str, Any]) -> Any:
        self.tick()
        return _DISPATCH[type(node)](self, node, scope)

    def e_constant(self, node: ast.Constant, scope: dict[str, Any]) -> Any:
        return node.value

    def e_name(self, node: ast.Name, scope: dict[str, Any]) -> Any:
        name = node.id
        if name in scope:
            return scope[name]
        if name in self.names:
            return self.names[name]
        if name in SAFE_BUILTINS:
            return self.builtin(name)
        if name in FORBIDDEN_NAMES:
            raise ExpressionError(f"name {name!r} is forbidden")
        raise ExpressionError(f"unknown name {name!r}")

    def e_binop(self, node: ast.BinOp, scope: dict[str, Any]) -> Any:
        return self.binop(node.op, self.eval(node.left, scope), self.eval(node.right, scope))

    def e_unaryop(self, node: ast.UnaryOp, scope: dict[str, Any]) -> Any:
        return _UNARYOPS[type(node.op)](self.eval(node.operand, scope))

    def e_boolop(self, node: ast.BoolOp, scope: dict[str, Any]) -> Any:
        is_and = isinstance(node.op, ast.And)
        value = None
        for sub in node.values:
            value = self.eval(sub, scope)
            if bool(value) is not is_and:
                return value
        return value

    def e_compare(self, node: ast.Compare, scope: dict[str, Any]) -> Any:
        left = self.eval(node.left, scope)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self.eval(comparator, scope)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True

    def e_ifexp(self, node: ast.IfExp, scope: dict[str, Any]) -> Any:
        return self.eval(node.body if self.eval(node.test, scope) else node.orelse, scope)

    def e_subscript(self, node: ast.Subscript, scope: dict[str, Any]) -> Any:
        obj = self.eval(node.value, scope)
        key = self.eval(node.slice, scope)
        if callable(obj) or isinstance(obj, types.ModuleType):
            raise ExpressionError(f"subscripting {type(obj).__name__} objects is not allowed")
        if isinstance(key, str) and key.startswith("__"):
            raise ExpressionError(f"subscript key {_clip(key)!r} is forbidden (double underscore)")
        return obj[key]

    def e_slice(self, node: ast.Slice, scope: dict[str, Any]) -> Any:
        parts = (node.lower, node.upper, node.step)
        return slice(*(None if part is None else self.eval(part, scope) for part in parts))

    def e_attribute(self, node: ast.Attribute, scope: dict[str, Any]) -> Any:
        return self.attribute(self.eval(node.value, scope), node.attr)

    def e_call(self, node: ast.Call, scope: dict[str, Any]) -> Any:
        func = self.eval(node.func, scope)
        args = [self.eval(arg, scope) for arg in node.args]
        kwargs = {kw.arg: self.eval(kw.value, scope) for kw in node.keywords if kw.arg}
        if isinstance(func, _Builtin | _BoundMethod) or _user_method(func):
            return func(*args, **kwargs)
        raise ExpressionError(f"calling {type(func).__name__} objects is not allowed")

    def e_list(self, node: ast.List, scope: dict[str, Any]) -> Any:
        return self.built([self.eval(elt, scope) for elt in node.elts])

    def e_tuple(self, node: ast.Tuple, scope: dict[str, Any]) -> Any:
        return self.built(tuple(self.eval(elt, scope) for elt in node.elts))

    def e_set(self, node: ast.Set, scope: dict[str, Any]) -> Any:
        return self.built({self.eval(elt, scope) for elt in node.elts})

    def e_dict(self, node: ast.Dict, scope: dict[str, Any]) -> Any:
        pairs = zip(node.keys, node.values, strict=True)  # no None keys: "**" was refused statically
        return self.built({self.eval(k, scope): self.eval(v, scope) for k, v in pairs if k is not None})

    def e_joinedstr(self, node: ast.JoinedStr, scope: dict[str, Any]) -> Any:
        pieces = [self.eval(value, scope) for value in node.values]
        self.ensure_length(sum(len(p) for p in pieces), "f-string result")
        return self.built("".join(pieces))

    def e_formattedvalue(self, node: ast.FormattedValue, scope: dict[str, Any]) -> Any:
        value = self.eval(node.value, scope)
        if node.conversion != -1:
            self.ensure_length(self.size(value), "converted value")
            value = (
                ascii(value)
                if node.conversion == 97
                else repr(value)
                if node.conversion == 114
                else str(value)
            )
        spec = "" if node.format_spec is None else self.eval(node.format_spec, scope)
        self.ensure_length(self.size(value) + self.spec_width(spec), "formatted value")
        return format(value, spec)

    # -- comprehensions

    def loops(
        self, generators: list[ast.comprehension], local: dict[str, Any], index: int = 0
    ) -> Iterator[None]:
        gen = generators[index]
        for item in self.eval(gen.iter, local):
            self.tick()
            self.bind(gen.target, item, local)
            if all(self.eval(cond, local) for cond in gen.ifs):
                if index + 1 == len(generators):
                    yield None
                else:
                    yield from self.loops(generators, local, index + 1)

    def bind(self, target: ast.AST, value: Any, local: dict[str, Any]) -> None:
        if isinstance(target, ast.Name):
            local[target.id] = value
            return
        elts = target.elts  # type: ignore[attr-defined]
        values = tuple(itertools.islice(iter(value), len(elts) + 1))
        if len(values) != len(elts):
            raise ExpressionError(f"cannot unpack {len(values)} values into {len(elts)} names")
        for element, item in zip(elts, values, strict=True):
            self.bind(element, item, local)

    def produce(self, node: ast.AST, elts: list[ast.AST], scope: dict[str, Any]) -> Iterator[Any]:
        local = dict(scope)
        count = 0
        for _ in self.loops(node.generators, local):  # type: ignore[attr-defined]
            items = [self.eval(elt, local) for elt in elts]
            count += 1
            self.ensure_length(count, "comprehension")
            self.charge(sum(self.size(item) for item in items))
            yield items[0] if len(items) == 1 else items

    def e_listcomp(self, node: ast.ListComp, scope: dict[str, Any]) -> Any:
        return list(self.produce(node, [node.elt], scope))

    def e_setcomp(self, node: ast.SetComp, scope: dict[str, Any]) -> Any:
        return set(self.produce(node, [node.elt], scope))

    def e_dictcomp(self, node: ast.DictComp, scope: dict[str, Any]) -> Any:
        return dict(self.produce(node, [node.key, node.value], scope))

    def e_generatorexp(self, node: ast.GeneratorExp, scope: dict[str, Any]) -> Any:
        return self.produce(node, [node.elt], scope)

    # -- operators

    def binop(self, op: ast.operator, left: Any, right: Any) -> Any:
        kind = type(op)
        if kind is ast.Pow:
            self.check_pow(left, right)
        elif kind is ast.Mult:
            self.check_mult(left, right)
        elif kind is ast.LShift and isinstance(left, int) and isinstance(right, int) and left:
            if left.bit_length() + right > self.lim.max_int_bits:
                raise ExpressionLimitError(
                    f"integer result of << would exceed {self.lim.max_int_digits} digits"
                )
        elif kind is ast.Mod and isinstance(left, str):
            return self.built(self.percent_format(left, right))
        return self.built(_BINOPS[kind](left, right))

    def check_pow(self, base: Any, exp: Any, mod: Any = None) -> None:
        if not (isinstance(base, int) and isinstance(exp, int)) or exp < 0 or abs(base) <= 1:
            return
        if mod is not None:
            if exp.bit_length() > 4096 or abs(mod).bit_length() > 4096:
                raise ExpressionLimitError("pow() with a modulus takes operands of at most 4096 bits")
            return
        if math.log2(abs(base)) * exp > self.lim.max_int_bits:
            raise ExpressionLimitError(f"integer result of ** would exceed {self.lim.max_int_digits} digits")

    def check_mult(self, left: Any, right: Any) -> None:
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > self.lim.max_int_bits + 1:
                raise ExpressionLimitError(
                    f"integer result of * would exceed {self.lim.max_int_digits} digits"
                )
            return
        seq, times = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(seq, str | bytes | list | tuple) and isinstance(times, int) and times > 1:
            self.ensure_length(len(seq) * times, f"repeated {type(seq).__name__}")
            self.ensure_size(self.size(seq) * times, f"repeated {type(seq).__name__}")

    # -- attributes and methods

    def attribute(self, obj: Any, attr: str) -> Any:
        _check_attribute_name(attr)
        kind = _method_kind(obj)
        if kind is not None:
            if attr in _SAFE_METHODS[kind]:
                return _BoundMethod(self, obj, attr)
            raise ExpressionError(f"{type(obj).__name__}.{attr} is not an allowed method")
        if _opaque(obj):
            raise ExpressionError(f"attribute access on {type(obj).__name__} objects is not allowed")
        value = getattr(obj, attr)
        if isinstance(value, type | types.ModuleType):
            raise ExpressionError(
                f"attribute {attr!r} refers to a {type(value).__name__}, which is not allowed"
            )
        return value

    def call_method(self, obj: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.tick()
        if name in ("format", "format_map"):
            mapping = args[0] if name == "format_map" and len(args) == 1 and not kwargs else None
            if name == "format_map" and mapping is None:
                raise ExpressionError("format_map() takes exactly one mapping")
            return self.built(self.safe_format(obj, args, kwargs, mapping))
        if isinstance(obj, str):
            args = self.precheck_str_method(obj, name, args, kwargs)
        return self.built(getattr(obj, name)(*args, **kwargs))

    def precheck_str_method(
        self, text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, ...]:
        first = args[0] if args else next(iter(kwargs.values()), None)
        if name in ("center", "ljust", "rjust", "zfill") and isinstance(first, int):
            self.ensure_length(first, f"str.{name}() result")
        elif name == "expandtabs":
            tab = 8 if first is None else first
            if isinstance(tab, int):
                self.ensure_length(len(text) + text.count("\t") * max(tab, 0), "str.expandtabs() result")
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            hits = text.count(args[0])
            if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
                hits = min(hits, args[2])
            self.ensure_length(len(text) + hits * (len(args[1]) - len(args[0])), "str.replace() result")
        elif name == "join" and len(args) == 1:
            items = list(args[0])
            self.ensure_length(len(items), "str.join() input")
            total = sum(len(i) for i in items if isinstance(i, str)) + len(text) * max(len(items) - 1, 0)
            self.ensure_length(total, "str.join() result")
            return (items,)
        return args

    # -- formatting

    def spec_width(self, spec: str) -> int:
        """Return the widths a format spec asks for, refusing nested fields and huge widths."""
        if "{" in spec or "}" in spec:
            raise ExpressionError("nested replacement fields in a format spec are not allowed")
        total = 0
        for run in "".join(c if c.isdigit() else " " for c in spec).split():
            if len(run) > 6 or int(run) > self.lim.max_format_width:
                raise ExpressionLimitError(
                    f"format width {_clip(run, 12)} is over {self.lim.max_format_width}"
                )
            total += int(run)
        return total

    def safe_format(self, fmt: Any, args: tuple[Any, ...], kwargs: dict[str, Any], mapping: Any) -> str:
        if not isinstance(fmt, str):
            raise ExpressionError("format() is only allowed on strings")
        positional = () if mapping is not None else args
        named = mapping if mapping is not None else kwargs
        estimate, auto = len(fmt), 0
        for _literal, field, spec, _conv in string.Formatter().parse(fmt):
            if field is None:
                continue
            if field == "":
                arg, auto = (positional[auto] if auto < len(positional) else None), auto + 1
            elif field.isdigit():
                arg = positional[int(field)] if int(field) < len(positional) else None
            elif field.isidentifier() and not field.startswith("_"):
                arg = named.get(field) if isinstance(named, Mapping) else None
            else:
                raise ExpressionError(
                    f"format field {{{_clip(field, 40)}}} is not allowed (no attribute or index access)"
                )
            estimate += self.spec_width(spec or "") + _PER_FIELD_SLACK + self.size(arg)
        self.ensure_length(estimate, "formatted string")
        return str.format_map(fmt, mapping) if mapping is not None else str.format(fmt, *args, **kwargs)

    def percent_format(self, fmt: str, args: Any) -> str:
        estimate = len(fmt)
        by_key = isinstance(args, Mapping)
        for key, width in _percent_fields(fmt, self.lim.max_format_width):
            estimate += width + _PER_FIELD_SLACK
            if by_key and key is not None and key in args:
                estimate += self.size(args[key])
        if not by_key:
            estimate += self.size(args)
        self.ensure_length(estimate, "%-formatted string")
        return fmt % args

    # -- builtins

    def builtin(self, name: str) -> Any:
        if name in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[name]
        found = self.builtins.get(name)
        if found is None:
            fn = getattr(self, f"b_{name}", None) or _PLAIN_BUILTINS[name]
            found = self.builtins[name] = _Builtin(self, name, fn)
        return found

    def b_str(self, *args: Any, **kwargs: Any) -> str:
        if len(args) == 1 and not kwargs:
            return safe_str(args[0], self.lim.max_sequence)
        return str(*args, **kwargs)

    def b_range(self, *args: Any) -> range:
        result = range(*args)
        try:
            length = len(result)
        except OverflowError:
            length = self.lim.max_sequence + 1
        self.ensure_length(length, "range()")
        return result

    def b_pow(self, base: Any, exp: Any, mod: Any = None) -> Any:
        self.check_pow(base, exp, mod)
        return pow(base, exp, mod)

    def b_round(self, number: Any, ndigits: Any = None) -> Any:
        # round(1, -10**9) would compute 10**(10**9) inside CPython.
        if isinstance(ndigits, int) and abs(ndigits) > self.lim.max_int_digits:
            raise ExpressionLimitError(f"round() ndigits over {self.lim.max_int_digits}")
        return round(number, ndigits)

    def b_sum(self, iterable: Any, start: Any = 0) -> Any:
        if isinstance(start, int | float | complex):
            return sum(iterable, start)
        total = start
        for item in iterable:  # non-numbers go through "+" so every step is size-checked
            self.check_clock()
            total = self.binop(ast.Add(), total, item)
        return total


_PLAIN_BUILTINS: dict[str, Callable[..., Any]] = {
    "bool": bool, "int": int, "float": float, "abs": abs, "len": len, "min": min, "max": max,
    "all": all, "any": any, "slice": slice, "enumerate": enumerate, "zip": zip, "reversed": reversed,
    "list": list, "tuple": tuple, "dict": dict, "set": set, "sorted": sorted,
}  # fmt: skip

_DISPATCH: dict[type, Callable[[_Evaluator, Any, dict[str, Any]], Any]] = {
    node_type: getattr(_Evaluator, f"e_{node_type.__name__.lower()}")
    for node_type in (
        ast.Constant, ast.Name, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp,
        ast.Subscript, ast.Slice, ast.Attribute, ast.Call, ast.List, ast.Tuple, ast.Set, ast.Dict,
        ast.JoinedStr, ast.FormattedValue, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
    )
}  # fmt: skip


def _percent_fields(fmt: str, max_width: int) -> Iterator[tuple[str | None, int]]:
    """Yield ``(mapping key, width + precision)`` for each ``%`` conversion, parsed like CPython."""
    i, n = 0, len(fmt)
    while (i := fmt.find("%", i)) >= 0:
        i += 1
        key = None
        if i < n and fmt[i] == "(":
            depth, start = 1, i + 1
            while depth and (i := i + 1) < n:
                depth += {"(": 1, ")": -1}.get(fmt[i], 0)
            key, i = fmt[start:i], i + 1
        while i < n and fmt[i] in "#0- +":
            i += 1
        width = 0
        for _part in range(2):  # width, then precision after "."
            if i < n and fmt[i] == "*":
                raise ExpressionError("'*' widths in %-formatting are not allowed")
            start = i
            while i < n and fmt[i].isdigit():
                i += 1
            if i - start > 6 or (i > start and int(fmt[start:i]) > max_width):
                raise ExpressionLimitError(f"%-format width {_clip(fmt[start:i], 12)} is over {max_width}")
            width += int(fmt[start:i] or 0)
            if i < n and fmt[i] == "." and _part == 0:
                i += 1
            else:
                break
        if i < n and fmt[i] == "%":
            i += 1
            continue
        yield key, width
