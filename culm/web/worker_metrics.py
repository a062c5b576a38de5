"""``/metrics`` of a ``culm worker`` (``--metrics-port``), prefork pools included.

A prefork pool runs components in child processes, each with its own counters. prometheus-client's
multiprocess mode has every child write its values to files in ``$PROMETHEUS_MULTIPROC_DIR`` and the
parent serve their sum. The mode is chosen when prometheus-client is imported, so the directory is
set here before anything imports it; the children inherit it when the pool forks them.

prometheus-client's own server starts a thread for each connection and gives it no time limit:
found probing (session 16), 500 connections that sent half a request each held 500 threads of the
worker for ever (a thread's stack each), and 10,000 would have exhausted its descriptors. The page
is served here by the same WSGI application from a server that holds at most
:data:`MAX_CONNECTIONS` connections at once, :data:`MAX_CONNECTIONS_PER_CLIENT` of one address
(an IPv6 client by its /64 network), each for at most :data:`CONNECTION_SECONDS`; a connection
past a bound is closed as soon as it is accepted.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from culm.web.addresses import address_key

# A Prometheus server scrapes with one connection at a time; a few replicas, a person's browser.
MAX_CONNECTIONS = 32
MAX_CONNECTIONS_PER_CLIENT = 4
# A scrape takes milliseconds; a connection still open after this is closed, whatever it is doing.
CONNECTION_SECONDS = 10.0


class _QuietHandler(WSGIRequestHandler):
    timeout = 2 * CONNECTION_SECONDS  # each read or write of the socket; the server bounds the whole

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Log no request: a scrape every 15 s would fill the worker's log."""


class BoundedMetricsServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, as prometheus-client's server, with the bounds above."""

    daemon_threads = True

    def __init__(self, address: tuple[Any, ...], family: int) -> None:
        self.address_family = family
        self.held: dict[Any, tuple[str, float]] = {}  # request socket -> (client key, accepted at)
        self.held_lock = threading.Lock()
        super().__init__(address, _QuietHandler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        key = address_key(str(client_address[0]))
        with self.held_lock:
            if len(self.held) >= MAX_CONNECTIONS or sum(k == key for k, _ in self.held.values()) >= MAX_CONNECTIONS_PER_CLIENT:
                return False  # the server shuts the connection down: shutdown_request finds it unheld
            self.held[request] = (key, time.monotonic())
        return True

    def shutdown_request(self, request: Any) -> None:
        with self.held_lock:
            self.held.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone, or timed out, is no error of the worker's: socketserver printed a traceback
        to its log for each (500 lines of traceback for 500 half-sent requests)."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def service_actions(self) -> None:
        """Called by serve_forever between accepts (every 0.5 s at most): end the connections held
        too long (their threads, blocked reading or writing, see the socket shut and finish)."""
        now = time.monotonic()
        with self.held_lock:
            late = [r for r, (_, since) in self.held.items() if now - since > CONNECTION_SECONDS]
        for request in late:
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed meanwhile


def serve_metrics(port: int, host: str, registry: Any) -> BoundedMetricsServer:
    """Serve ``registry`` as Prometheus text on ``host:port`` from a daemon thread."""
    from prometheus_client import make_wsgi_app

    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server = BoundedMetricsServer(address, family)
    server.set_app(make_wsgi_app(registry))
    threading.Thread(target=server.serve_forever, name="culm-metrics", daemon=True).start()
    return server


def start_worker_metrics(port: int, pool: str | None, host: str = "127.0.0.1") -> str:
    """Serve the worker's metrics on ``host:port``; returns a line saying where.

    Args:
        port: TCP port of the metrics page.
        pool: the worker's Celery pool (None means prefork).
        host: address to bind.
    """
    if pool in (None, "prefork"):
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="culm-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        from celery.signals import worker_process_init, worker_process_shutdown
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        serve_metrics(port, host, registry)
        worker_process_init.connect(_install_in_child, weak=False)
        worker_process_shutdown.connect(_child_gone, weak=False)
        return f"metrics on http://{host}:{port}/metrics (prefork: summed over {folder})"
    from prometheus_client import REGISTRY

    from culm.web.metrics import EngineMetrics

    EngineMetrics().install()
    serve_metrics(port, host, REGISTRY)
    return f"metrics on http://{host}:{port}/metrics"


def _install_in_child(**_: Any) -> None:
    from culm.web.metrics import EngineMetrics

    EngineMetrics().install()


def _child_gone(pid: int | None = None, **_: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid or os.getpid())
