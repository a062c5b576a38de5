"""Builtins and methods handed to sandboxed expressions, each bounded before it runs.

A builtin here is a function ``fn(ev, *args, **kwargs)`` of the running :class:`Evaluator`; the
plain ones (whose cost the evaluator's checks of their arguments and result already bound) are
listed in ``PLAIN_BUILTINS``.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from culm.data.sandbox_guards import POINTER_BYTES, render_limited
from culm.data.sandbox_objects import COMPARE_DUNDERS
from culm.errors import ExpressionLimitError

if TYPE_CHECKING:
    from culm.data.sandbox_eval import Evaluator


_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_RANGE_WORK = 4_000_000
_PIECE_BYTES = POINTER_BYTES + 49  # a list slot and a short str object


def precheck_str_method(ev: Evaluator, text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a ``str`` method call whose result would be too long or hold too much memory;
    returns the arguments to call it with."""
    first: Any = args[0] if args else next(iter(kwargs.values()), None)
    if name in ("center", "ljust", "rjust", "zfill") and issubclass(type(first), int):
        ev.ensure_length(first, f"str.{name}() result")
    elif name == "expandtabs":
        tab = 8 if first is None else first
        if issubclass(type(tab), int):
            ev.ensure_length(len(text) + text.count("\t") * max(tab, 0), "str.expandtabs() result")
    elif name == "replace" and len(args) >= 2 and issubclass(type(args[0]), str) and issubclass(type(args[1]), str):
        hits = text.count(args[0])
        if len(args) > 2 and issubclass(type(args[2]), int) and args[2] >= 0:
            hits = min(hits, args[2])
        ev.ensure_length(len(text) + hits * (len(args[1]) - len(args[0])), "str.replace() result")
    elif name in _CASE_MAPS and not text.isascii() and 3 * len(text) > ev.lim.max_sequence:
        _size_case_map(ev, text, name)
    elif name == "join" and len(args) == 1:
        items = ev.take(args[0], "str.join() input")
        total = sum(len(i) for i in items if issubclass(type(i), str)) + len(text) * max(len(items) - 1, 0)
        ev.ensure_length(total, "str.join() result")
        return (items,)
    elif name in ("split", "rsplit", "splitlines"):
        if name == "splitlines":
            pieces = sum(text.count(c) for c in _LINE_BREAKS) + 1
        elif issubclass(type(first), str) and first:
            pieces = text.count(first) + 1
        else:
            pieces = len(text) // 2 + 1
        ev.ensure_length(pieces, f"str.{name}() result")
        ev.reserve(pieces * _PIECE_BYTES + len(text), f"str.{name}() result")
    return args


# Case mappings that may turn one character into up to three ("ß".upper() is "SS", "ﬃ".upper()
# "FFI", "İ".lower() "i" and a combining dot); ASCII text keeps its length.
_CASE_MAPS = frozenset({"upper", "lower", "casefold", "swapcase", "title", "capitalize"})
_CASE_CHUNK = 65_536


def _size_case_map(ev: Evaluator, text: str, name: str) -> None:
    """Refuse ``text.<name>()`` when its result would be too long, measured a chunk at a time (the
    clock read between them) before the whole result is built: "ß" * 3,000,000 upper-cased built 6
    million characters before any check. A chunk's first letter may be cased as a word's start
    where the whole text would not: 2 characters of slack each."""
    mapping = getattr(str, name)
    total = 0
    for start in range(0, len(text), _CASE_CHUNK):
        total += len(mapping(text[start : start + _CASE_CHUNK])) + 2
        ev.ensure_length(total - 2, f"str.{name}() result")
        ev.check_clock()


def precheck_set_method(ev: Evaluator, items: Any, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Take every argument of a set method, and refuse keys that would collide in the result."""
    taken = tuple(ev.take(arg, f"set.{name}() argument") for arg in args)
    ev.hashed([*items, *(item for arg in taken for item in arg)], f"set.{name}()")
    return taken


def b_str(ev: Evaluator, *args: Any, **kwargs: Any) -> str:
    if len(args) == 1 and not kwargs:
        return render_limited(args[0], ev.lim.max_sequence)
    return str(*args, **kwargs)


def b_int(ev: Evaluator, *args: Any, **kwargs: Any) -> int:
    text: Any = args[0] if args else None
    ev.ensure_number(text, "int()")
    if issubclass(type(text), str | bytes) and len(text) > ev.lim.max_int_bits + 64:
        # base 2 needs max_int_bits digits; decimal text is capped by Python itself, but
        # power-of-two bases are not (int('f' * 10**6, 16) is linear, then // on it quadratic)
        raise ExpressionLimitError(f"int() of a {len(text)}-character text: over {ev.lim.max_int_digits} digits")
    return int(*args, **kwargs)


def b_range(ev: Evaluator, *args: Any) -> range:
    result = range(*args)
    try:
        length = len(result)
    except OverflowError:
        length = ev.lim.max_sequence + 1
    ev.ensure_length(length, "range()")
    return result


def b_pow(ev: Evaluator, base: Any, exp: Any, mod: Any = None) -> Any:
    ev.check_pow(base, exp, mod)
    return pow(base, exp, mod)


def b_round(ev: Evaluator, number: Any, ndigits: Any = None) -> Any:
    # round(1, -10**9) would compute 10**(10**9) inside CPython.
    if issubclass(type(ndigits), int) and abs(ndigits) > ev.lim.max_int_digits:
        raise ExpressionLimitError(f"round() ndigits over {ev.lim.max_int_digits}")
    ev.ensure_number(number, "round()")
    return round(number, ndigits)


def _walkable(ev: Evaluator, source: Any) -> bool:
    """True for a range whose ints are small enough to go through in C without materialising it
    (``len`` is capped by ``range()``; each item costs one machine word per 30 bits)."""
    if not issubclass(type(source), range) or not source:
        return False
    words = max(abs(source.start), abs(source.stop)).bit_length() // 30 + 1
    return len(source) * words <= _RANGE_WORK


def b_sum(ev: Evaluator, iterable: Any, start: Any = 0) -> Any:
    if issubclass(type(start), int | float) and _walkable(ev, iterable):
        return sum(iterable, start)
    items = ev.take(iterable, "sum() input")
    ev.plain(items, ("__add__", "__radd__"), "sum() of")  # a lazy input's items (a generator's, a view's)
    if issubclass(type(start), int | float | complex):
        return sum(items, start)
    total = start
    for item in items:  # non-numbers go through "+" so every step is size-checked
        total = ev.binop(ast.Add(), total, item)
    return total


def b_list(ev: Evaluator, iterable: Any = ()) -> list[Any]:
    return ev.take(iterable, "list()", returned=True)


def b_tuple(ev: Evaluator, iterable: Any = ()) -> tuple[Any, ...]:
    return tuple(ev.take(iterable, "tuple()", returned=True))


def b_sorted(ev: Evaluator, iterable: Any, *, key: Any = None, reverse: bool = False) -> list[Any]:
    items = ev.take(iterable, "sorted()", returned=True)
    ev.plain(items, COMPARE_DUNDERS, "sorted() of")  # a lazy input's items (a generator's, a view's)
    items.sort(key=key, reverse=reverse)
    return items


def b_set(ev: Evaluator, iterable: Any = ()) -> set[Any]:
    return set(ev.hashed(ev.take(iterable, "set()"), "set()"))


def b_dict(ev: Evaluator, source: Any = (), **kwargs: Any) -> dict[Any, Any]:
    ev.reach(source, "iterating")
    pairs = ev.take(source.items() if issubclass(type(source), Mapping) else source, "dict()")
    keys = [pair[0] for pair in pairs if issubclass(type(pair), list | tuple) and pair]
    ev.hashed(keys + list(kwargs), "dict()")
    return dict(pairs, **kwargs)


def b_all(ev: Evaluator, iterable: Any) -> bool:
    ev.reach(iterable, "iterating")
    if not ev.lazy(iterable):
        return all(ev.truths(iterable))
    return all(all(ev.truths(chunk)) for chunk in ev.drain(iterable))


def b_any(ev: Evaluator, iterable: Any) -> bool:
    ev.reach(iterable, "iterating")
    if not ev.lazy(iterable):
        return any(ev.truths(iterable))
    return any(any(ev.truths(chunk)) for chunk in ev.drain(iterable))


def _extreme(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(ev: Evaluator, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not _walkable(ev, args[0]):  # one iterable: take it first, so that no lazy one runs unchecked in C
            args = (ev.take(args[0], f"{fn.__name__}() input"),)
            ev.plain(args[0], COMPARE_DUNDERS, f"{fn.__name__}() of")
        return fn(*args, **kwargs)

    return call


def _plain(fn: Callable[..., Any]) -> Callable[..., Any]:
    return lambda _ev, *args, **kwargs: fn(*args, **kwargs)


def _reaching(fn: Callable[..., Any], what: str) -> Callable[..., Any]:
    """``fn``, its arguments refused first when their protocol is their own code (``zip(f)``
    takes the file's iterator at once; consuming the zip reads it)."""

    def call(ev: Evaluator, *args: Any, **kwargs: Any) -> Any:
        for arg in args:
            ev.reach(arg, what)
        return fn(*args, **kwargs)

    return call


# enumerate, zip and reversed stay lazy: they hold nothing, and whatever consumes them is one of the
# builtins above, all() or any() (a lazy iterable in chunks, the clock read between them), "in"
# (the same), a comprehension (checked per item) or a bounded container.
BUILTINS: dict[str, Callable[..., Any]] = {
    "str": b_str, "int": b_int, "range": b_range, "pow": b_pow, "round": b_round, "sum": b_sum,
    "list": b_list, "tuple": b_tuple, "sorted": b_sorted, "set": b_set, "dict": b_dict,
    "min": _extreme(min), "max": _extreme(max), "all": b_all, "any": b_any,
    "len": _reaching(len, "measuring"),
    **{fn.__name__: _reaching(fn, "iterating") for fn in (enumerate, zip, reversed)},
    "bool": lambda ev, *args: ev.truth(*args) if args else False,
    **{fn.__name__: _plain(fn) for fn in (float, abs, slice)},
}  # fmt: skip
