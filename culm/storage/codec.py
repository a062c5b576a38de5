"""How payloads (inputs, outputs, context values) are written to text columns.

JSON where it keeps the value, as bamboo's runtime stores data; a pickled envelope otherwise.
What JSON changes without losing anything is accepted (bamboo does the same): a tuple comes back
as a list, and a dict key that is an int, float, bool or None comes back as its JSON text (``1``
as ``"1"``). A value JSON would lose data of takes the pickle fallback and comes back exact: one
with a dict whose keys collide once written as JSON text (``{1: "a", "1": "b"}``), a key JSON
cannot hold (a tuple), or a value JSON cannot hold (a set, a datetime, a user object produced by
trusted component code). A value neither takes raises :class:`~culm.errors.UnstorableValueError`.
See docs/data-and-variables.md ("How values are stored").
"""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

from culm import _json
from culm.errors import UnstorableValueError
from culm.model.limits import MAX_PAYLOAD_BYTES, payload_size, text_problem

_PICKLE_KEY = "__culm_pickle__"


def dumps(value: Any) -> str:
    """Serialise ``value`` to text, JSON first, pickle envelope second.

    A value that merely looks like an envelope (a dict whose only key is the envelope's, as
    untrusted input such as a tree's data or a callback's payload may be) is itself put in an
    envelope, so :func:`loads` returns that dict and never unpickles text that culm did not pickle.

    Raises:
        UnstorableValueError: Neither JSON nor pickle takes the value (a lock, a value nested
            thousands of levels deep).
    """
    return _sized(_encode(value))


def dumps_ids(ids: Sequence[str]) -> str:
    """:func:`dumps` of a sequence of strings (ids, context keys): JSON holds every such value, so
    the checks :func:`dumps` makes first have nothing to find (same text)."""
    return _json.dumps(ids)


def _encode(value: Any) -> str:
    try:
        collide = _json.keys_collide(value)
    except _json.TooManyValuesError as exc:
        raise UnstorableValueError(str(exc)) from None
    if not _looks_like_envelope(value) and not collide:
        try:
            return _json.dumps(value)
        except (TypeError, ValueError, RecursionError):  # RecursionError: a value holding itself
            pass
    try:
        blob = base64.b64encode(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")
    except RecursionError:
        raise UnstorableValueError("it is nested too deeply to store") from None
    except Exception as exc:  # noqa: BLE001 - pickle raises many kinds (TypeError, PicklingError...)
        raise UnstorableValueError(f"neither JSON nor pickle takes it ({type(exc).__name__}: {exc})") from None
    return json.dumps({_PICKLE_KEY: blob})


def _sized(text: str) -> str:
    # Escapes at most double a text: a short one needs no counting (most payloads are small).
    if len(text) > MAX_PAYLOAD_BYTES // 2 and (size := payload_size(text)) > MAX_PAYLOAD_BYTES:
        raise UnstorableValueError(f"it takes {size:,} bytes once encoded, over the {MAX_PAYLOAD_BYTES:,} stored")
    return text


def dumps_fields(fields: Mapping[str, Any], what: str) -> str:
    """:func:`dumps` of a dict of named values (a node's inputs or outputs).

    Raises:
        UnstorableValueError: Naming every key of ``what`` whose value cannot be stored
            (``field`` = ``what``, ``keys`` = those keys).
    """
    try:
        return dumps(fields)
    except UnstorableValueError:
        pass
    bad: list[Any] = []
    reasons: list[str] = []
    for key, value in fields.items():
        try:
            dumps(value)
        except UnstorableValueError as exc:
            bad.append(key)
            reasons.append(f"{key!r}: {exc}")
    if not bad:  # each value alone is fine, together not: too deep, or too large, only as a whole
        bad, reasons = _largest_until_small(fields)
        if not bad:
            raise UnstorableValueError(f"the {what} cannot be stored as a whole", what, [])
    raise UnstorableValueError(f"{what} the store cannot hold: " + _listed(reasons), what, bad)


# Reasons a refusal names one by one; the others are counted (600,000 inputs left out made a
# message of 60 MB).
LISTED_REASONS = 20


def _listed(reasons: list[str]) -> str:
    more = len(reasons) - LISTED_REASONS
    return "; ".join(reasons[:LISTED_REASONS]) + (f"; and {more:,} more" if more > 0 else "")


def _largest_until_small(fields: Mapping[str, Any]) -> tuple[list[Any], list[str]]:
    """The keys of ``fields`` whose values, largest first, must go for the rest to be stored
    (none when the rest still cannot be), with a reason for each.

    Each field is sized with its key, as it stands in the whole, so the sum is the whole's size
    within a few bytes. The rest is encoded again only when that sum is within the limit, and after
    a rest that still cannot be stored, once what is left has halved: found probing (session 23),
    the sum counted the values alone, so 600,000 small inputs stayed over the limit with their keys
    and the rest was encoded again after each one left out, the engine thread held for good.
    """
    sizes = sorted(((payload_size(_encode(key)) + payload_size(_encode(value)) + 2, key)
                    for key, value in fields.items()), key=lambda pair: pair[0], reverse=True)
    rest = dict(fields)
    total = sum(size for size, _key in sizes)
    check_at = MAX_PAYLOAD_BYTES
    bad: list[Any] = []
    reasons: list[str] = []
    for size, key in sizes:
        if total <= check_at:
            if _storable(rest):
                return bad, reasons
            check_at = total // 2
        del rest[key]
        total -= size
        bad.append(key)
        reasons.append(f"{key!r}: it takes {size:,} bytes once encoded, too many with the others "
                       f"({MAX_PAYLOAD_BYTES:,} are stored in all)")
    return bad, reasons


def _storable(fields: Mapping[str, Any]) -> bool:
    try:
        dumps(fields)
    except UnstorableValueError:
        return False
    return True


def dumps_named(value: Any, what: str) -> str:
    """:func:`dumps`, its refusal naming ``what`` (callback data, a variable)."""
    try:
        return dumps(value)
    except UnstorableValueError as exc:
        raise UnstorableValueError(f"{what}: {exc}", what) from None


def dumps_tree(tree: dict | str, root_id: str) -> str:
    """A pipeline's tree (the dict, or its JSON text already encoded, or already shrunk) as the
    store keeps it: compressed when that makes a large tree shorter (:func:`culm._json.shrunk`).

    Raises:
        UnstorableValueError: The tree cannot be stored, naming the pipeline.
    """
    what = f"tree of pipeline {root_id}"
    try:
        # str(): the drivers get a plain str, not the ShrunkText marking it done
        return _sized(str(_json.shrunk(tree if isinstance(tree, str) else _encode(tree))))
    except UnstorableValueError as exc:
        raise UnstorableValueError(f"{what}: {exc}", what) from None


def dumps_variable(pipeline_id: str, key: str, value: Any) -> str:
    """:func:`dumps` of a context value, its refusal naming the variable and its pipeline."""
    try:
        return dumps(value)
    except UnstorableValueError as exc:
        raise UnstorableValueError(f"variable {key} of pipeline {pipeline_id}: {exc}", "context", [key]) from None


def check_log_lines(rows: Sequence[Mapping[str, Any]]) -> None:
    """Raises UnstorableValueError naming the log lines (``line`` of each row) no backend can hold."""
    bad = [(i, problem) for i, r in enumerate(rows) if (problem := text_problem(r["line"]))]
    if bad:
        raise UnstorableValueError(
            "log lines the store cannot hold: " + "; ".join(f"line {i + 1} holds {p}" for i, p in bad),
            "log lines", [i for i, _ in bad],
        )


def _looks_like_envelope(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and (_PICKLE_KEY in value or _json.ZLIB_KEY in value)


def loads(text: str | None) -> Any:
    """Inverse of :func:`dumps`; ``None`` stays ``None``."""
    if text is None:
        return None
    value = _json.loads(text)
    if _looks_like_envelope(value):
        if _json.ZLIB_KEY in value:  # written by dumps_tree only: a lookalike is in a pickle envelope
            return loads(_json.unshrunk(value[_json.ZLIB_KEY]))
        return pickle.loads(base64.b64decode(value[_PICKLE_KEY]))  # noqa: S301 - written by dumps only
    return value


def payloads_within(sizes: Sequence[tuple[int, int]], budget: int) -> list[int]:
    """The ids among ``sizes`` (``(id, stored characters)``, oldest first) whose payloads are read
    within ``budget`` characters in all, newest first: the newest always (unless ``budget`` is 0),
    the ones before it while they fit."""
    wanted: list[int] = []
    for row_id, size in reversed(sizes):
        if budget <= 0 or (size > budget and wanted):
            break
        wanted.append(row_id)
        budget -= size
    return wanted
