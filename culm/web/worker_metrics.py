"""``/metrics`` of a ``culm worker`` (``--metrics-port``), prefork pools included.

A prefork pool runs components in child processes, each with its own counters. prometheus-client's
multiprocess mode has every child write its values to files in ``$PROMETHEUS_MULTIPROC_DIR`` and the
parent serve their sum. The mode is chosen when prometheus-client is imported, so the directory is
set here before anything imports it; the children inherit it when the pool forks them.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any


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
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(port, addr=host, registry=registry)
        worker_process_init.connect(_install_in_child, weak=False)
        worker_process_shutdown.connect(_child_gone, weak=False)
        return f"metrics on http://{host}:{port}/metrics (prefork: summed over {folder})"
    from prometheus_client import start_http_server

    from culm.web.metrics import EngineMetrics

    EngineMetrics().install()
    start_http_server(port, addr=host)
    return f"metrics on http://{host}:{port}/metrics"


def _install_in_child(**_: Any) -> None:
    from culm.web.metrics import EngineMetrics

    EngineMetrics().install()


def _child_gone(pid: int | None = None, **_: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid or os.getpid())
