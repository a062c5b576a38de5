"""Formatting in the expression sandbox: ``str.format``, ``%`` and f-string specs, sized first.

A format call's output is estimated from its literal text, the widths its specs ask for and the
sizes of the values it formats, and refused before anything is formatted when it would be too
long; widths above :attr:`Limits.max_format_width` and fields that reach into attributes or
indexes are refused outright.
"""

from __future__ import annotations

import datetime
import re
import string
from collections import UserString
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from culm.data.sandbox_guards import clip
from culm.data.sandbox_objects import PERCENT_DUNDERS, without_default
from culm.errors import ExpressionError, ExpressionLimitError

if TYPE_CHECKING:
    from culm.data.sandbox import Limits
    from culm.data.sandbox_eval import Evaluator

PER_FIELD_SLACK = 400  # a float rendered with %f can take ~320 characters
_CLOCK_EVERY = 4095  # fields or % signs between two readings of the clock (a mask)


def spec_width(lim: Limits, spec: str) -> int:
    """Return the widths a format spec asks for, refusing nested fields and huge widths."""
    if "{" in spec or "}" in spec:
        raise ExpressionError("nested replacement fields in a format spec are not allowed")
    total = 0
    for run in "".join(c if c.isdigit() else " " for c in spec).split():
        if len(run) > 6 or int(run) > lim.max_format_width:
            raise ExpressionLimitError(f"format width {clip(run, 12)} is over {lim.max_format_width}")
        total += int(run)
    return total


# Characters one strftime directive may write, but a time zone's name: %c writes 24 ("Mon Jan  1
# 00:00:00 2024"), %z up to 16 ("+HH:MM:SS.ffffff"); its spec is 2 characters.
STRFTIME_DIRECTIVE = 32


# A strftime directive: flags, a width glibc pads to ("%_999d" is 999 characters), a modifier.
_DIRECTIVE = re.compile(r"%[-_0^#]*(\d*)[EO]?")


def strftime_width(lim: Limits, value: Any, pattern: str) -> int:
    """The characters ``value.strftime(pattern)`` may write: each directive its width or
    :data:`STRFTIME_DIRECTIVE` plus the time zone's name, whichever is more, and the rest as is;
    counted until the total passes ``lim.max_sequence``."""
    zone = value.tzname() if issubclass(type(value), datetime.datetime | datetime.time) else None
    directive = STRFTIME_DIRECTIVE + len(zone or "")
    total = len(pattern)
    for match in _DIRECTIVE.finditer(pattern):
        digits = match.group(1)
        if len(digits) > 6 or (digits and int(digits) > lim.max_format_width):
            raise ExpressionLimitError(f"strftime() width {clip(digits, 12)} is over {lim.max_format_width}")
        total += max(int(digits or 0), directive)
        if total > lim.max_sequence:
            # too long already: each directive counts 32 or more, so this loop runs at most
            # max_sequence / 32 times (a pattern of 500,000 '%Y' took 1 s, the clock unread)
            return total
    return total


def format_width(lim: Limits, value: Any, spec: str) -> int:
    """The characters formatting ``value`` with ``spec`` may add to the value's own text.

    A date, datetime or time formats with strftime: its spec is not a width but a pattern whose
    every directive writes up to :data:`STRFTIME_DIRECTIVE` characters, and ``%Z`` the zone's
    whole name (``'{:%c%c...}'.format(when)`` wrote 12 million characters from a spec of one
    million, 87 MB, before any check saw the result).
    """
    width = spec_width(lim, spec)
    if issubclass(type(value), datetime.date | datetime.time) and "%" in spec:  # not a __class__ property
        zone = value.tzname() if issubclass(type(value), datetime.datetime | datetime.time) else None
        width += len(spec) + spec.count("%") * (STRFTIME_DIRECTIVE + len(zone or ""))
    return width


def safe_format(ev: Evaluator, fmt: Any, args: tuple[Any, ...], kwargs: dict[str, Any], mapping: Any) -> str:
    """``fmt.format(*args, **kwargs)`` (or ``format_map(mapping)``), sized before it runs."""
    if not issubclass(type(fmt), str):
        raise ExpressionError("format() is only allowed on strings")
    positional = () if mapping is not None else args
    named = mapping if mapping is not None else kwargs
    estimate, auto = len(fmt), 0
    for index, (_literal, field, spec, _conv) in enumerate(string.Formatter().parse(fmt)):
        if not index & _CLOCK_EVERY:  # a text of a million characters has up to 500,000 fields
            ev.check_clock()
            ev.ensure_length(estimate, "formatted string")
        if field is None:
            continue
        if field == "":
            arg, auto = (positional[auto] if auto < len(positional) else None), auto + 1
        elif field.isdigit():
            arg = positional[int(field)] if int(field) < len(positional) else None
        elif field.isidentifier() and not field.startswith("_"):
            arg = named.get(field) if issubclass(type(named), Mapping) else None
        else:
            raise ExpressionError(
                f"format field {{{clip(field, 40)}}} is not allowed (no attribute or index access)"
            )
        ev.ensure_number(arg, "formatted value")
        estimate += format_width(ev.lim, arg, spec or "") + PER_FIELD_SLACK + ev.size(arg)
    ev.ensure_length(estimate, "formatted string")
    return str.format_map(fmt, without_default(mapping)) if mapping is not None else str.format(fmt, *args, **kwargs)


def percent_format(ev: Evaluator, fmt: Any, args: Any) -> Any:
    """``fmt % args`` (a str, bytes, bytearray or UserString), sized before it runs."""
    estimate = len(fmt)
    by_key = issubclass(type(args), Mapping)
    if not issubclass(type(args), tuple) and "%(" in text_of(fmt):
        # "%(key)s" indexes whatever is not a tuple, a Mapping or not (a client's __getitem__)
        ev.reach(args, "formatting from")
    ev.plain(args, PERCENT_DUNDERS, "formatting")
    text = text_of(fmt)
    whole = not by_key  # '%s' % mapping writes the whole mapping
    for key, width in percent_fields(text, ev.lim.max_format_width, ev.check_clock):
        estimate += width + PER_FIELD_SLACK
        ev.ensure_length(estimate, "%-formatted string")
        if by_key and key is not None and key in args:
            estimate += ev.size(args[key])
        whole = whole or key is None
    if whole:
        estimate += ev.size(args)
    for value in args.values() if by_key else args if issubclass(type(args), tuple) else (args,):
        ev.ensure_number(value, "%-formatted value")  # %d of a Decimal converts it to an int
    ev.ensure_length(estimate, "%-formatted string")
    return fmt % (without_default(args) if by_key else args)

def text_of(fmt: Any) -> str:
    """The text of a ``%`` format (a str, bytes, bytearray or UserString)."""
    return fmt if issubclass(type(fmt), str) else fmt.data if issubclass(type(fmt), UserString) else bytes(fmt).decode("latin-1")


def percent_fields(fmt: str, max_width: int, tick: Callable[[], None]) -> Iterator[tuple[str | None, int]]:
    """Yield ``(mapping key, width + precision)`` for each ``%`` conversion, parsed like CPython;
    ``tick`` is called every few thousand ``%`` signs (``'%%' * 499999`` has half a million)."""
    i, n, seen = 0, len(fmt), 0
    while (i := fmt.find("%", i)) >= 0:
        i += 1
        seen += 1
        if not seen & _CLOCK_EVERY:
            tick()
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
                raise ExpressionLimitError(f"%-format width {clip(fmt[start:i], 12)} is over {max_width}")
            width += int(fmt[start:i] or 0)
            if i < n and fmt[i] == "." and _part == 0:
                i += 1
            else:
                break
        if i < n and fmt[i] == "%":
            i += 1
            continue
        yield key, width
