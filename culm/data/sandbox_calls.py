"""Builtins and methods handed to sandboxed expressions, each bounded before it runs.

A builtin here is a function ``fn(ev, *args, **kwargs)`` of the running :class:`Evaluator`; the
plain ones (whose cost the evaluator's checks of their arguments and result already bound) are
listed in ``PLAIN_BUILTINS``.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from culm.data.sandbox_guards import render_limited
from culm.errors import ExpressionLimitError

if TYPE_CHECKING:
    from culm.data.sandbox_eval import Evaluator


def precheck_str_method(ev: Evaluator, text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a ``str`` method call whose result would be too long; returns the arguments to use."""
    first = args[0] if args else next(iter(kwargs.values()), None)
    if name in ("center", "ljust", "rjust", "zfill") and isinstance(first, int):
        ev.ensure_length(first, f"str.{name}() result")
    elif name == "expandtabs":
        tab = 8 if first is None else first
        if isinstance(tab, int):
            ev.ensure_length(len(text) + text.count("\t") * max(tab, 0), "str.expandtabs() result")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        hits = text.count(args[0])
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            hits = min(hits, args[2])
        ev.ensure_length(len(text) + hits * (len(args[1]) - len(args[0])), "str.replace() result")
    elif name == "join" and len(args) == 1:
        items = list(args[0])
        ev.ensure_length(len(items), "str.join() input")
        total = sum(len(i) for i in items if isinstance(i, str)) + len(text) * max(len(items) - 1, 0)
        ev.ensure_length(total, "str.join() result")
        return (items,)
    return args


def b_str(ev: Evaluator, *args: Any, **kwargs: Any) -> str:
    if len(args) == 1 and not kwargs:
        return render_limited(args[0], ev.lim.max_sequence)
    return str(*args, **kwargs)


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
    if isinstance(ndigits, int) and abs(ndigits) > ev.lim.max_int_digits:
        raise ExpressionLimitError(f"round() ndigits over {ev.lim.max_int_digits}")
    return round(number, ndigits)


def b_sum(ev: Evaluator, iterable: Any, start: Any = 0) -> Any:
    if isinstance(start, int | float | complex):
        return sum(iterable, start)
    total = start
    for item in iterable:  # non-numbers go through "+" so every step is size-checked
        ev.check_clock()
        total = ev.binop(ast.Add(), total, item)
    return total


def _plain(fn: Callable[..., Any]) -> Callable[..., Any]:
    return lambda _ev, *args, **kwargs: fn(*args, **kwargs)


BUILTINS: dict[str, Callable[..., Any]] = {
    "str": b_str, "range": b_range, "pow": b_pow, "round": b_round, "sum": b_sum,
    **{fn.__name__: _plain(fn) for fn in (
        bool, int, float, abs, len, min, max, all, any, slice, enumerate, zip, reversed, list, tuple,
        dict, set, sorted,
    )},
}  # fmt: skip
