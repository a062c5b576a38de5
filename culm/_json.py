"""Compact JSON text and back, with the standard library's C encoder and scanner called directly.

``json.dumps`` and ``JSONEncoder.encode`` build a new C encoder at every call and ``json.loads``
wraps the scanner in whitespace handling; for the small values the engine writes and reads at
every node step that costs more than the encoding itself. The text and the values are exactly
those of ``json`` with ``separators=(",", ":")``.
"""

from __future__ import annotations

import json
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


def keys_collide(value: Any) -> bool:
    """Whether some dict in ``value`` has two keys that JSON would write as the same text.

    Only dicts with a key that is not a str need a look; lists and tuples are walked for the
    dicts they hold. A value nested too deeply to walk is left to the encoders.
    """
    try:
        return _collide(value)
    except RecursionError:
        return False


def _collide(value: Any) -> bool:
    cls = type(value)
    if cls is dict or isinstance(value, dict):
        keys = value.keys()
        if not all(type(k) is str for k in keys) and all(isinstance(k, _JSON_KEYS) for k in keys):
            if len({_key_text(k) for k in keys}) != len(value):
                return True
        return any(_collide(v) for v in value.values() if isinstance(v, (dict, list, tuple)))
    if cls is list or cls is tuple or isinstance(value, (list, tuple)):
        return any(_collide(v) for v in value if isinstance(v, (dict, list, tuple)))
    return False


def _key_text(key: Any) -> str:
    """The text JSON writes for a dict key (str, int, float, bool or None)."""
    if isinstance(key, str):
        return key
    return dumps(key)  # True -> "true", None -> "null", 1.0 -> "1.0", as json.dumps does
