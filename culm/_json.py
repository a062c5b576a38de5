"""Compact JSON text and back, with the standard library's C encoder and scanner called directly.

``json.dumps`` and ``JSONEncoder.encode`` build a new C encoder at every call and ``json.loads``
wraps the scanner in whitespace handling; for the small values the engine writes and reads at
every node step that costs more than the encoding itself. The text and the values are exactly
those of ``json`` with ``separators=(",", ":")``.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

try:
    from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
except ImportError:  # an interpreter without the _json accelerator
    _c_make_encoder = None


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_FALLBACK = json.JSONEncoder(separators=(",", ":"), check_circular=False)
_ENCODE = (
    _c_make_encoder(None, _refuse, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
    if _c_make_encoder is not None else None
)
_SCAN = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_JSON_KEYS = (str, int, float, bool, type(None))  # key types JSON writes as text
_FLAT = frozenset(_JSON_KEYS)  # exact types of values that hold no dict


def dumps(value: Any) -> str:
    """Compact JSON of ``value`` (NaN and infinities allowed, as ``json.dumps`` writes them).

    No circular-reference bookkeeping: a value that contains itself recurses until
    ``RecursionError``, which callers treat like any value JSON cannot hold.

    Raises:
        TypeError: A value JSON cannot hold (a set, a datetime, an object).
        ValueError: A dict key JSON cannot hold.
        RecursionError: A cyclic or very deeply nested value.
    """
    if _ENCODE is None or isinstance(value, str):
        return _FALLBACK.encode(value)
    return "".join(_ENCODE(value, 0))


def loads(text: str) -> Any:
    """The value of one JSON text, as ``json.loads`` reads it (raises what it raises)."""
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        return json.loads(text)  # leading whitespace or an empty text: the full parser decides
    if end != len(text):
        return json.loads(text)  # trailing whitespace or data: the full parser decides
    return value


# Deeper than this, the C encoder gives up anyway (RecursionError): the value is pickled whatever
# its keys, so the walk below need not look further (and stops on a value that contains itself).
_WALK_DEPTH = 1000


def keys_collide(value: Any) -> bool:
    """Whether some dict in ``value`` has two keys that JSON would write as the same text
    (``{1: "a", "1": "b"}``: JSON would keep one of them).

    Only a dict with a key that is not a str can; lists, tuples and dicts are walked for them
    without recursion, with exact type checks (this runs before every JSON write).

    Raises:
        TooManyValuesError: The walk went past MAX_WALK values.
    """
    cls = type(value)
    if cls is dict:
        # Most values written are flat dicts of str keys and scalars (a node's inputs and
        # outputs): nothing to walk.
        for key, child in value.items():
            if type(key) is not str or type(child) not in _FLAT:
                return _walk(value)
        return False
    if cls is not list and cls is not tuple:
        return isinstance(value, dict | list | tuple) and _walk(value)
    return _walk(value)


# Values a walk visits, counting one shared many times over: JSON would write each occurrence,
# and more than this many are more text than a store keeps (culm.model.limits.MAX_PAYLOAD_BYTES).
MAX_WALK = 3_500_000


class TooManyValuesError(ValueError):
    """A value holds more than MAX_WALK values, counting each occurrence of a shared one."""


def _walk(value: Any) -> bool:
    # One level at a time, each occurrence of a shared container counted again (as JSON would
    # write it); no (container, depth) pairs to build, which cost more than the checks.
    level = [value]
    visited = 0
    for _ in range(_WALK_DEPTH + 1):
        below: list[Any] = []
        push = below.append
        for item in level:
            visited += len(item)
            if visited > MAX_WALK:  # a list holding the one before twice, 40 deep, holds 2**40
                raise TooManyValuesError(f"it holds more than {MAX_WALK:,} values, counting each repeat")
            if isinstance(item, dict):
                for key in item:
                    if type(key) is not str:
                        if _dict_collides(item):
                            return True
                        break
                children: Any = item.values()
            else:
                children = item
            for child in children:
                cls = type(child)
                if cls is dict or cls is list or cls is tuple or (
                        cls is not str and isinstance(child, dict | list | tuple)):
                    push(child)
        if not below:
            return False
        level = below
    return False


def _dict_collides(item: dict) -> bool:
    keys = [k for k in item if isinstance(k, _JSON_KEYS)]  # other keys: JSON refuses the dict
    return len(keys) == len(item) and len({k if isinstance(k, str) else dumps(k) for k in keys}) != len(keys)


# What :func:`viewable` shows of a value: this many levels and values (counting each repeat of a
# shared one), the rest marked as cut.
VIEW_DEPTH = 200
VIEW_VALUES = 200_000
_INT_DIGITS = 4000  # Python refuses to write an int of more than 4,300 digits as text
_SCALARS = (str, bool, type(None))


def viewable(value: Any) -> Any:
    """``value`` as any JSON encoder can write it with ``allow_nan=False``, for showing it (a web
    answer, ``culm ... --json``); stored values are never changed.

    A NaN or infinity becomes ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``; an int too long to
    write as text, a note of its size; a dict key JSON cannot hold, its ``repr``; tuples and sets,
    lists; a container that holds itself, ``"<cycle>"``; what is nested deeper than VIEW_DEPTH or
    comes after VIEW_VALUES values, a note that it was cut.
    Other objects are left for the encoder's ``default``.
    """
    return _View().of(value, 0)


class _View:
    def __init__(self) -> None:
        self.walked = 0
        self.on_path: set[int] = set()

    def of(self, value: Any, depth: int) -> Any:
        if isinstance(value, _SCALARS):
            return value
        if isinstance(value, float):
            return value if value - value == 0 else "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
        if isinstance(value, int):
            bits = value.bit_length()
            return value if bits < _INT_DIGITS * 3 else f"<an integer of {bits:,} bits, too long to show>"
        if not isinstance(value, dict | list | tuple | set | frozenset):
            return value
        self.walked += len(value)
        if depth >= VIEW_DEPTH or self.walked > VIEW_VALUES:
            return f"<cut: nested more than {VIEW_DEPTH} levels deep or more than {VIEW_VALUES:,} values in all>"
        if id(value) in self.on_path:
            return "<cycle>"
        self.on_path.add(id(value))
        try:
            if isinstance(value, dict):
                return {self.key(k): self.of(v, depth + 1) for k, v in value.items()}
            return [self.of(v, depth + 1) for v in value]
        finally:
            self.on_path.discard(id(value))

    def key(self, key: Any) -> Any:
        if isinstance(key, str | bool | type(None)):
            return key
        if isinstance(key, int | float):
            return self.of(key, 0)
        try:
            return repr(key)[:1000]
        except Exception:  # noqa: BLE001 - a key object whose repr fails is still shown
            return f"<a {type(key).__name__} key>"


# A stored text over this many characters is kept zlib-compressed when that makes it shorter
# (see :func:`shrunk`): a tree repeats the same keys on every node, so a 10,000-node tree of
# ~7 MB becomes ~1.4 MB and fits the limit of what one stored payload may take.
SHRINK_OVER = 1_000_000
ZLIB_KEY = "__culm_zlib__"


class ShrunkText(str):
    """A text :func:`shrunk` already made: shrinking it again returns it as it is (compressing a
    7 MB tree costs ~0.2 s of CPU; validation measures it so, and storing it then needs no second go)."""

    __slots__ = ()


def shrunk(text: str) -> ShrunkText:
    """``text`` as a store keeps it: itself, or when it is long and compresses, a JSON envelope
    ``{ZLIB_KEY: base64 of zlib of text}`` (ASCII: nothing for a driver to escape), which
    :func:`unshrunk` turns back into ``text``. A :class:`ShrunkText` is returned as it is."""
    if isinstance(text, ShrunkText):
        return text
    if len(text) <= SHRINK_OVER:
        return ShrunkText(text)
    packed = base64.b64encode(zlib.compress(text.encode("utf-8", "surrogatepass"), 6)).decode("ascii")
    envelope = dumps({ZLIB_KEY: packed})
    return ShrunkText(envelope if len(envelope) < len(text) else text)


def unshrunk(packed: str) -> str:
    """The text a :func:`shrunk` envelope's value ``packed`` holds."""
    return zlib.decompress(base64.b64decode(packed)).decode("utf-8", "surrogatepass")
