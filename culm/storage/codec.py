"""How payloads (inputs, outputs, context values) are written to text columns.

JSON where possible; values JSON cannot hold (sets, datetimes, user objects produced by trusted
component code) fall back to a pickled envelope, as bamboo's runtime does.
"""

from __future__ import annotations

import base64
import json
import pickle
from typing import Any

from culm import _json

_PICKLE_KEY = "__culm_pickle__"


def dumps(value: Any) -> str:
    """Serialise ``value`` to text, JSON first, pickle envelope second.

    A value that merely looks like an envelope (a dict whose only key is the envelope's, as
    untrusted input such as a tree's data or a callback's payload may be) is itself put in an
    envelope, so :func:`loads` returns that dict and never unpickles text that culm did not pickle.
    """
    if not _looks_like_envelope(value):
        try:
            return _json.dumps(value)
        except (TypeError, ValueError, RecursionError):  # RecursionError: a value holding itself
            pass
    blob = base64.b64encode(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")
    return json.dumps({_PICKLE_KEY: blob})


def _looks_like_envelope(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and _PICKLE_KEY in value


def loads(text: str | None) -> Any:
    """Inverse of :func:`dumps`; ``None`` stays ``None``."""
    if text is None:
        return None
    value = _json.loads(text)
    if _looks_like_envelope(value):
        return pickle.loads(base64.b64decode(value[_PICKLE_KEY]))  # noqa: S301 - written by dumps only
    return value
