"""Errors as RFC 9457 problem details (``application/problem+json``), and fast JSON answers."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from culm._json import viewable
from culm._retry import is_outage
from culm.errors import (
    CulmError,
    DatabaseSettingsError,
    InvalidOperationError,
    NotFoundError,
    SchemaOutdatedError,
    TreeInvalidError,
)
from culm.model.limits import duplicate_key

PROBLEM_TYPE = "application/problem+json"


class Problem(BaseModel):
    """An error answer: HTTP status, a title, what went wrong, and for trees every problem."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    problems: list[dict[str, Any]] | None = None


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


class FastJSON(JSONResponse):
    """JSON without FastAPI's per-value encoder pass (a 1,000-node state tree is large); times as ISO 8601.

    A NaN or an infinity (a component's output, a tree's input) is sent as the string ``"NaN"``,
    ``"Infinity"`` or ``"-Infinity"``: Python writes them as bare ``NaN``, which is not JSON, and a
    browser's ``JSON.parse`` then refuses the whole answer (the console could not show the node).
    An int too long to write, a key JSON cannot hold (a tuple), a value that holds itself: see
    :func:`culm._json.viewable` (each was a 500, the last one a request that never ended). A lone
    surrogate in a string is written as its JSON escape.
    """

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, default=_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (ValueError, TypeError, RecursionError):  # rare: only then is the content walked
            text = json.dumps(viewable(content), default=_default, ensure_ascii=False, separators=(",", ":"),
                              allow_nan=False)
        # A lone surrogate (a JSON body may hold one: "\ud800") cannot be UTF-8: it is sent escaped,
        # as ensure_ascii would (an id echoed in a tree's problems was a 500, found probing session 16).
        return text.encode("utf-8", "backslashreplace")


class ProblemError(HTTPException):
    """An HTTP error that is answered as a problem document."""

    def __init__(self, status: int, detail: str, problems: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail, headers)
        self.problems = problems


_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 409: "Conflict",
           413: "Content too large", 415: "Unsupported media type", 422: "Unprocessable content",
           429: "Too many requests", 500: "Internal server error", 503: "Service unavailable"}


def problem(status: int, detail: str, problems: list[dict[str, Any]] | None = None,
            headers: dict[str, str] | None = None) -> JSONResponse:
    """A problem+json response."""
    body: dict[str, Any] = {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status,
                            "detail": detail}
    if problems is not None:
        body["problems"] = problems
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    elif status == 429:
        headers = {"Retry-After": "1", **(headers or {})}
    return FastJSON(body, status_code=status, media_type=PROBLEM_TYPE, headers=headers)


def tree_problems(exc: Any) -> list[dict[str, Any]]:
    """Each problem of a refused tree as ``{"node_id", "message"}`` (node_id None for the whole tree)."""
    return [{"node_id": p.where, "message": p.message} for p in getattr(exc, "problems", None) or []]


def unwrap(result: Any) -> Any:
    """The data of a successful :class:`~culm.api.EngineAPIResult`; otherwise the matching HTTP error.

    Raises:
        ProblemError: 422 for an invalid tree, 404 for an unknown id, 409 for a refused command,
            400 for any other mistake of the caller, 503 (``Retry-After: 2``) when the database
            cannot be reached or used (as the CLI's exit 4), 500 for a fault of the engine.
    """
    if result.result:
        return result.data
    exc = result.exc
    if exc is not None and is_outage(exc):
        # An outage, or a server out of connections: not the engine's fault, and the same call
        # may work in a moment. A 500 said "Internal server error" and a client gave up.
        raise ProblemError(503, f"the database cannot be reached or used: {result.message}",
                           headers={"Retry-After": "2"})
    if isinstance(exc, SchemaOutdatedError | DatabaseSettingsError):
        # The database is unusable until an operator acts (the message says how): not the
        # caller's mistake (400) nor the engine's fault (500); no Retry-After, a retry will not help.
        raise ProblemError(503, f"the database cannot be used: {result.message}")
    if isinstance(exc, TreeInvalidError):
        raise ProblemError(422, result.message, tree_problems(exc))
    if isinstance(exc, NotFoundError):
        raise ProblemError(404, result.message)
    if isinstance(exc, InvalidOperationError):
        raise ProblemError(409, result.message)
    if isinstance(exc, CulmError | TypeError | ValueError):
        raise ProblemError(400, result.message)
    raise ProblemError(500, result.message)


# Documented error answers of the endpoints (for the OpenAPI schema).
def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Problem, "description": _TITLES.get(code, "Error"),
                   "content": {PROBLEM_TYPE: {}}} for code in codes}


async def unique_keys(request: Request) -> None:
    """Refuse (422) a JSON body with one key twice in an object: the JSON parser keeps the last
    without a word, so a tree with two activities or flows under one id would quietly lose one.

    Raises:
        ProblemError: naming the key.
    """
    body = await request.body()
    if body:
        key = await run_in_threadpool(duplicate_key, body)  # a 4 MiB body takes a moment
        if key is not None:
            raise ProblemError(422, f"the request body has the key {key[:80]!r} twice in one object (JSON would "
                                    "keep only the last; ids and keys must be unique)")
