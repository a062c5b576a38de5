"""The ASGI application of ``culm serve``: API routers, error answers, body limit, console, metrics."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from culm.web import auth, live, metrics, routes_control, routes_read
from culm.web.problems import ProblemError, problem, responses
from culm.web.tokens import TokenStore

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_BODY = 4 * 1024 * 1024
# Previews rendered at once (each may take up to the 10 s render budget on a thread of the server's
# pool, 40 threads shared by every request): past it a preview is answered 429 at once, so a storm
# of previews cannot hold the threads the console, the states and the commands need.
DEFAULT_MAX_PREVIEWS = 4


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413 before any endpoint acts on them.

    A declared ``Content-Length`` over the limit is refused unread; a chunked body is counted as it
    arrives and refused as soon as it passes the limit (endpoints read the whole body first).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send)
            return
        seen = 0
        over = refused = started = False

        async def counting_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # The framework turns an error while reading the body into its own answer (400);
            # once the body went over the limit, that answer is replaced by the 413.
            nonlocal started, refused
            if over:
                if not started and not refused:
                    refused = True
                    await self._refuse(scope, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            pass
        if over and not started and not refused:
            await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        response = problem(413, f"the request body is larger than {self.limit} bytes; nothing was stored")
        await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def create_app(runtime: Any, *, auth_enabled: bool = True, max_body: int = DEFAULT_MAX_BODY,
               tokens: TokenStore | None = None, host: str | None = None,
               max_previews: int = DEFAULT_MAX_PREVIEWS) -> FastAPI:
    """The service for ``runtime``.

    Args:
        runtime: a :class:`culm.Runtime` (embedded and running, or submit-and-read).
        auth_enabled: False only for ``culm serve --no-auth`` on a loopback address.
        max_body: largest accepted request body in bytes.
        tokens: the token store (default: the runtime's database).
        host: the name the service binds (``culm serve --host``); without tokens, requests
            addressed to it are served like those to ``localhost``.
        max_previews: previews rendered at once; more are answered 429 with ``Retry-After``.

    Raises:
        InvalidOperationError: ``runtime`` keeps its data in memory; tokens and metrics need a database.
    """
    table = runtime.token_table()  # refuses a memory:// runtime: tokens and metrics live in the database
    tokens = tokens or TokenStore(table)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.hub.close()
        app.state.metrics.close()

    # No /docs page: FastAPI's loads Swagger UI from a CDN, and nothing here fetches from outside.
    app = FastAPI(title="culm", lifespan=lifespan, version=_version(), docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json",
                  description="REST API of the culm workflow engine. Send `Authorization: Bearer <token>`.")
    app.state.runtime = runtime
    app.state.tokens = tokens
    app.state.auth = auth.Authenticator(app.state.tokens, enabled=auth_enabled, own_names=[host] if host else [])
    app.state.hub = live.ChangeHub(runtime)
    app.state.metrics = metrics.ServiceMetrics(runtime, app.state.hub)
    app.state.max_previews = max_previews
    app.state.preview_slots = threading.BoundedSemaphore(max_previews)
    app.add_middleware(BodyLimit, limit=max_body)
    _add_error_handlers(app)
    app.include_router(routes_read.router)
    app.include_router(routes_control.router)
    app.include_router(routes_control.tokens_router)

    @app.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(auth.viewer)],
             response_class=Response, responses=responses(401))
    def prometheus(request: Request) -> Response:
        body, content_type = request.app.state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    def console() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(auth.AuthError)
    async def _auth(request: Request, exc: auth.AuthError) -> Response:
        return problem(exc.status, exc.detail)

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> Response:
        return problem(exc.status_code, str(exc.detail), exc.problems, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        # The framework reads and checks the body before the endpoint's dependencies run: without
        # this, a client with no token would hear about its body (422) instead of a 401.
        try:
            await request.app.state.auth.identify(request)
        except auth.AuthError as refused:
            return problem(refused.status, refused.detail)
        content_type = request.headers.get("content-type", "")
        items = [{"field": _field(e), "message": _message(e, exc.body, content_type)} for e in exc.errors()]
        detail = "; ".join(i["message"] if i["field"] == "body" else f"{i['field']}: {i['message']}"
                           for i in items) or "invalid request"
        return problem(422, detail, items)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.__cause__ is not None:  # the framework could not read the body
            try:  # and did so before the endpoint's token check
                await request.app.state.auth.identify(request)
            except auth.AuthError as refused:
                return problem(refused.status, refused.detail)
            if isinstance(exc.__cause__, RecursionError):
                return problem(400, "the request body nests arrays or objects too deeply to be read "
                                    "(JSON values are refused past about 1,000 levels; culm keeps at most 100)")
            return problem(400, _unreadable(exc.__cause__))
        return problem(exc.status_code, str(exc.detail))


def _unreadable(cause: BaseException) -> str:
    """Why the framework could not read a request body."""
    if isinstance(cause, UnicodeDecodeError):
        return f"the request body is not UTF-8 text ({cause.reason} at byte {cause.start})"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return (f"the request body holds a number of more than {sys.get_int_max_str_digits():,} digits "
                "(more than Python reads)")
    return f"the request body could not be read: {type(cause).__name__}"


_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def _field(error: dict[str, Any]) -> str:
    """``body.tree``, ``query.limit``; ``body`` for JSON that does not parse (its message gives the place)."""
    loc = error.get("loc", ())
    return "body" if error.get("type") == "json_invalid" else ".".join(str(part) for part in loc)


def _message(error: dict[str, Any], body: Any, content_type: str) -> str:
    """What is wrong with the request, for a person: the framework's own words ("JSON decode
    error", "Field required") do not say where in the body, or that the body is empty."""
    loc, kind, text = tuple(error.get("loc", ())), error.get("type", ""), str(error.get("msg", ""))
    if kind == "json_invalid":
        position = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
        doc = body if isinstance(body, str) else ""
        line = doc.count("\n", 0, position) + 1
        column = position - (doc.rfind("\n", 0, position) + 1) + 1
        return (f"the request body is not valid JSON: {(error.get('ctx') or {}).get('error', text)} "
                f"at line {line}, column {column} (character {position})")
    if loc == ("body",):
        if "json" not in content_type.lower():
            return f"send the body as JSON with Content-Type: application/json (got {content_type or 'none'!r})"
        if kind == "missing":
            return "the request body is empty: send a JSON object"
        return f"the request body must be a JSON object, not {_JSON_KINDS.get(type(error.get('input')), 'that')}"
    got = _JSON_KINDS.get(type(error.get("input")))
    return f"{text}, not {got}" if got and kind.endswith("_type") else text


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema without the 422 it lists for operations whose only inputs are strings
    (path ids, optional text filters): nothing there can fail validation, so it is never answered."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for ops in schema["paths"].values():
        for op in ops.values():
            params = op.get("parameters", [])
            if "requestBody" not in op and all(_is_text(p.get("schema", {})) for p in params):
                op["responses"].pop("422", None)
    app.openapi_schema = schema
    return schema


def _is_text(schema: dict[str, Any]) -> bool:
    options = schema.get("anyOf", [schema])
    return all(o.get("type") in ("string", "null") and "maxLength" not in o for o in options)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("culm")
    except PackageNotFoundError:
        return "0"
