"""Prometheus metrics of the engine and the service, with bamboo's names where bamboo has one.

bamboo's names (``engine_*``, label ``hostname``, ``type`` = ``<code>_<version>`` for activities) are
kept for what bamboo measures too; what bamboo lacks is named ``culm_*``. Component calls and engine
steps are timed by hooks the core calls (:mod:`culm.core.observe`); callbacks come from
``pipeline_event`` and state writes from ``post_set_state``; queue depth, outbox lag and running processes are read from
the database when scraped.

In a prefork ``culm worker`` every pool process records into files under
``$PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode) and the parent serves their sum.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from culm import signals
from culm.core import observe

HOST = socket.gethostname()
BUCKETS = tuple(float(b) for b in os.environ.get(
    "BAMBOO_ENGINE_METRICS_BUCKETS", "0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10,30,60,100").split(","))

_FAILURE_COUNTERS = {
    ("execute", False): "engine_execute_failed_count",
    ("schedule", False): "engine_schedule_failed_count",
    ("execute", True): "engine_execute_exception_count",
    ("schedule", True): "engine_schedule_exception_count",
}


class EngineMetrics:
    """Engine metrics fed by the core's hooks and signals in this process.

    Args:
        registry: where the metrics live (None: prometheus-client's default registry, which is what
            multiprocess mode aggregates).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        kw: dict[str, Any] = {"registry": registry} if registry is not None else {}
        self.executions = Counter("culm_node_executions_total", "Component calls by component and result",
                                  ["hostname", "component", "kind", "result"], **kw)
        self.execute_time = Histogram("engine_node_execute_time", "Duration of component execute calls",
                                      ["hostname", "type"], buckets=BUCKETS, **kw)
        self.schedule_time = Histogram("engine_node_schedule_time", "Duration of component schedule calls",
                                       ["hostname", "type"], buckets=BUCKETS, **kw)
        self.step_time = Histogram("culm_engine_step_seconds", "Duration of one engine step (a transaction "
                                   "and its follow-up)", ["hostname"], buckets=BUCKETS, **kw)
        self.failures = {key: Counter(name, f"Component calls that failed ({name})", ["hostname", "type"], **kw)
                         for key, name in _FAILURE_COUNTERS.items()}
        self.callbacks = Counter("culm_callbacks_total", "Callbacks delivered to waiting activities",
                                 ["hostname"], **kw)
        self.transitions = Counter("culm_state_changes_total", "Node state writes by target state",
                                   ["hostname", "to_state"], **kw)
        # Summed over a prefork worker's pool processes (live ones only).
        self.abandoned = Gauge("culm_abandoned_threads", "User-code threads let go of because a node timeout "
                               "cut their call off, still running that call (at most $CULM_MAX_ABANDONED_THREADS "
                               "per process)", ["hostname"], multiprocess_mode="livesum", **kw)

    def install(self) -> None:
        """Start observing this process's engine."""
        observe.call_observer = self.on_call
        observe.step_observer = self.on_step
        observe.abandoned_observer = self.on_abandoned
        self.abandoned.labels(HOST).set(0)
        signals.pipeline_event.connect(self.on_event, weak=False)
        signals.post_set_state.connect(self.on_state, weak=False)

    def uninstall(self) -> None:
        if observe.call_observer == self.on_call:
            observe.call_observer = None
        if observe.step_observer == self.on_step:
            observe.step_observer = None
        if observe.abandoned_observer == self.on_abandoned:
            observe.abandoned_observer = None
        signals.pipeline_event.disconnect(self.on_event)
        signals.post_set_state.disconnect(self.on_state)

    def on_call(self, kind: str, code: str, version: str | None, ok: bool, raised: bool, seconds: float) -> None:
        kind_type = f"{code}_{version or 'legacy'}"
        self.executions.labels(HOST, code, kind, "success" if ok else "failure").inc()
        (self.execute_time if kind == "execute" else self.schedule_time).labels(HOST, kind_type).observe(seconds)
        if not ok:
            self.failures[(kind, raised)].labels(HOST, kind_type).inc()

    def on_step(self, seconds: float) -> None:
        self.step_time.labels(HOST).observe(seconds)

    def on_abandoned(self, count: int) -> None:
        self.abandoned.labels(HOST).set(count)

    def on_event(self, event: Any = None, **_: Any) -> None:
        if getattr(event, "event_type", None) == "post_callback":
            self.callbacks.labels(HOST).inc()

    def on_state(self, to_state: str = "", **_: Any) -> None:
        self.transitions.labels(HOST, to_state).inc()


class DatabaseCollector(Collector):
    """Queue depth, outbox lag and running work, read from the database at scrape time."""

    def __init__(self, runtime: Any, hub: Any = None) -> None:
        self.runtime = runtime
        self.hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        work = self.runtime.work_gauges()
        yield _gauge("culm_queue_depth", "Tasks due and not yet done", work.queued_tasks)
        oldest = work.oldest_unpublished_due
        lag = max(0.0, now - oldest) if oldest is not None and not self.runtime.embedded else 0.0
        yield _gauge("culm_outbox_lag_seconds", "Age of the oldest due task not yet published to the broker", lag)
        yield _gauge("engine_running_processes", "Processes walking a pipeline now", work.running_processes)
        yield _gauge("engine_running_schedules", "Schedules (polls, callback waits) not yet finished",
                     work.open_schedules)
        if self.hub is not None:
            yield _gauge("culm_web_sse_clients", "Clients following live changes", self.hub.subscribers)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["hostname"])
    family.add_metric([HOST], float(value))
    return family


class ServiceMetrics:
    """The ``/metrics`` page of ``culm serve``: engine metrics when this process runs the engine,
    database gauges always."""

    def __init__(self, runtime: Any, hub: Any = None) -> None:
        self.registry = CollectorRegistry()
        self.engine = EngineMetrics(self.registry)
        self.registry.register(DatabaseCollector(runtime, hub))
        self.requests = Gauge("culm_web_up", "1 while the service runs", ["hostname"], registry=self.registry)
        self.requests.labels(HOST).set(1)
        self._lock = threading.Lock()
        self.engine.install()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST

        with self._lock:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        self.engine.uninstall()
