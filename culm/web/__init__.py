"""``culm serve``: the REST API, its tokens and roles, live updates and the web console.

Everything here goes through the public API (:mod:`culm.api`, :class:`culm.Runtime` and its change
feed); tokens keep their own table, reached through ``Runtime.token_table()``. Needs the ``web`` extra (FastAPI, uvicorn, prometheus-client)
for :func:`create_app`; the tokens and the worker's metrics endpoint do not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from culm.web.tokens import PREFIX, ROLES, TokenError, TokenStore

if TYPE_CHECKING:
    from culm.web.app import create_app
    from culm.web.connections import counted_protocol
    from culm.web.worker_metrics import start_worker_metrics

__all__ = [
    # the service
    "create_app",
    "counted_protocol",
    # its tokens
    "TokenStore",
    "TokenError",
    "ROLES",
    "PREFIX",
    # a Celery worker's metrics endpoint
    "start_worker_metrics",
]


def __getattr__(name: str) -> Any:
    # The app imports FastAPI (the `web` extra); the command line imports this package for its
    # tokens without it.
    if name == "create_app":
        from culm.web.app import create_app

        return create_app
    if name == "counted_protocol":  # uvicorn's protocol: the `web` extra too
        from culm.web.connections import counted_protocol

        return counted_protocol
    if name == "start_worker_metrics":  # http.server: only `culm worker --metrics-port` serves it
        from culm.web.worker_metrics import start_worker_metrics

        return start_worker_metrics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
