"""Measured as users run it: submit, then poll ``api.get_pipeline_states`` until every root is FINISHED.

``wait_idle`` (the other scenarios) is what ``culm run`` does; users, bamboo's own benchmark and
the README's quick start submit and then poll the state tree of each pending pipeline. Each
``polled_*`` spec runs in one process on ONE database reused across repeats (as a long-lived
service would), and each repeat measures, one after the other on that database:

* ``median_s``: the polled figure: after submitting, the submitting thread (or, ``proc``, a
  second process on the same database) reads the state tree of every pending root, then sleeps
  the interval, until every root is FINISHED;
* ``wait_idle_median_s`` (embedded): the same trees timed with ``runtime.wait_idle()``;
* ``wait_median_s``: the same trees timed with ``runtime.wait(root)`` on each root (the change
  feed), when the culm under test has it;

``observing_cost`` is the polled figure over the wait_idle one (embedded) or over ``wait``
(distributed). ``distributed_polled_*`` runs 2 ``culm worker`` processes on PostgreSQL + Redis or
MariaDB + Redis.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench.trees import executed_nodes

# MariaDB as a bare URL gets it: the driver the culm under test picks for it (normalise_url:
# mysqlclient where installed, else PyMySQL); CULM_BENCH_MARIADB names one (mysql+pymysql://...).
MARIADB_ADMIN = os.environ.get("CULM_BENCH_MARIADB", "mysql://root@127.0.0.1:3306/mysql")
STUCK = frozenset({"FAILED", "REVOKED", "SUSPENDED"})

# A second process that polls: reads the root ids on stdin, polls until all are FINISHED and
# prints the perf_counter (system-wide CLOCK_MONOTONIC on Linux) at which it saw them so.
_POLLER = """
import json, sys, time
import culm
from culm import api
from bench.polled import poll_until_finished
rt = culm.Runtime(sys.argv[1], sys.argv[2] or None, workers=0, **json.loads(sys.argv[3]))
interval = float(sys.argv[4])
print("ready", flush=True)
for line in sys.stdin:
    ids = json.loads(line)
    try:
        print(json.dumps({"done": poll_until_finished(rt, ids, interval, 0.0, 600)}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
rt.close()
"""


def poll_until_finished(rt: Any, ids: list[str], interval: float, t0: float, timeout: float) -> float:
    """Read the state tree of every pending root, sleep ``interval``, again, until all are
    FINISHED; returns perf_counter() - ``t0`` at that moment."""
    from bench.scenarios import BenchFailure
    from culm import api

    pending = list(ids)
    deadline = time.perf_counter() + timeout
    while True:
        still = []
        for root in pending:
            state = api.get_pipeline_states(rt, root).data.get(root, {}).get("state")
            if state in STUCK:
                raise BenchFailure(f"pipeline {root} is {state}")
            if state != "FINISHED":
                still.append(root)
        pending = still
        now = time.perf_counter()
        if not pending:
            return now - t0
        if now > deadline:
            raise BenchFailure(f"{len(pending)} of {len(ids)} pipelines not FINISHED after {timeout:.0f}s")
        time.sleep(interval)


class SecondProcess:
    """A polling process on the same database (started once, reused by every repeat)."""

    def __init__(self, url: str, broker: str | None, options: dict[str, Any], interval: float) -> None:
        from bench.scenarios import home_env

        home, env = home_env()  # the culm this process measures
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _POLLER, url, broker or "", json.dumps(options), str(interval)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=home,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the polling process did not start")

    def poll(self, ids: list[str]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(ids) + "\n")
        self.proc.stdin.flush()

    def done(self) -> float:
        """The perf_counter at which the process saw every root FINISHED."""
        from bench.scenarios import BenchFailure

        assert self.proc.stdout is not None
        reply = json.loads(self.proc.stdout.readline())
        if "error" in reply:
            raise BenchFailure(f"polling process: {reply['error']}")
        return float(reply["done"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _submit(rt: Any, trees: list[dict[str, Any]]) -> float:
    from bench.scenarios import BenchFailure
    from culm import api

    t0 = time.perf_counter()
    for tree in trees:
        res = api.run_pipeline(rt, tree)
        if not res.result:
            raise BenchFailure(f"run_pipeline refused: {res.message}")
    return t0


def _polled(rt: Any, trees: list[dict[str, Any]], interval: float, second: SecondProcess | None) -> float:
    ids = [t["id"] for t in trees]
    if second is not None:
        second.poll(ids)  # the process starts polling before the first one is submitted
        t0 = _submit(rt, trees)
        return second.done() - t0
    t0 = _submit(rt, trees)
    return poll_until_finished(rt, ids, interval, t0, 600)


def _waited(rt: Any, trees: list[dict[str, Any]]) -> float:
    from bench.scenarios import BenchFailure

    t0 = _submit(rt, trees)
    for tree in trees:
        if rt.wait(tree["id"], timeout=600) != "FINISHED":
            raise BenchFailure(f"pipeline {tree['id']} was revoked")
    return time.perf_counter() - t0


def _wait_idle(rt: Any, trees: list[dict[str, Any]]) -> float:
    from bench.scenarios import wait_all_finished

    t0 = _submit(rt, trees)
    return wait_all_finished(rt, [t["id"] for t in trees], t0, 600)


def measure(rt: Any, spec: Any, url: str, broker: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """Run the spec's repeats on ``rt`` (one database): polled, then wait_idle and wait."""
    interval, in_process = spec.extra["interval"], spec.extra["poller"] == "thread"
    modes: dict[str, Callable[[list[dict[str, Any]]], float]] = {}
    second = None if in_process else SecondProcess(url, broker, options, interval)
    modes["polled"] = lambda trees: _polled(rt, trees, interval, second)
    if rt.embedded:
        modes["wait_idle"] = lambda trees: _wait_idle(rt, trees)
    if hasattr(rt, "wait"):
        modes["wait"] = lambda trees: _waited(rt, trees)
    times: dict[str, list[float]] = {m: [] for m in modes}
    nodes = pipelines = 0
    try:
        _warm_up(rt, spec)
        for _ in range(spec.repeats):
            for mode, run in modes.items():
                trees = spec.make()
                nodes, pipelines = sum(executed_nodes(t) for t in trees), len(trees)
                times[mode].append(run(trees))
    finally:
        if second is not None:
            second.close()
    out: dict[str, Any] = {"times": times["polled"], "nodes": nodes, "pipelines": pipelines}
    for mode in ("wait_idle", "wait"):
        if times.get(mode):
            out[f"{mode}_median_s"] = round(statistics.median(times[mode]), 4)
    base = out.get("wait_idle_median_s") or out.get("wait_median_s")
    if base:
        out["observing_cost"] = round(statistics.median(times["polled"]) / base, 3)
    return out


def _warm_up(rt: Any, spec: Any) -> None:
    """One untimed run: imports, caches and connection pools are as a running service has them."""
    trees = spec.make()
    t0 = _submit(rt, trees)
    poll_until_finished(rt, [t["id"] for t in trees], 0.01, t0, 600)


def run_polled(spec: Any) -> dict[str, Any]:
    """One ``polled_*`` spec: embedded on a SQLite file, or distributed (``spec.backend``)."""
    import culm
    from bench.scenarios import Cluster, summarise

    if spec.backend == "polled":
        workdir = tempfile.mkdtemp(prefix="culm-bench-polled-")
        url = f"sqlite:///{workdir}/bench.db"
        rt = culm.Runtime(url)
        try:
            got = measure(rt, spec, url, None, {})
        finally:
            rt.close()
            shutil.rmtree(workdir, ignore_errors=True)
        backend = "embedded (SQLite file, 8 threads), database reused"
        cluster_rss = None
    else:
        from bench.scenarios import PG_ADMIN, REDIS, _service_name
        from culm.storage.sql import normalise_url

        admin = normalise_url(MARIADB_ADMIN) if spec.extra["db"] == "mariadb" else PG_ADMIN
        with Cluster(spec.workers, admin=admin) as cluster:
            options = {"prefix": cluster.prefix}
            rt = culm.Runtime(cluster.db_url, broker=REDIS, **options)
            try:
                got = measure(rt, spec, cluster.db_url, REDIS, options)
            finally:
                rt.close()
            cluster_rss = cluster.worker_peak_rss_mb()
        driver = admin.split("://", 1)[0].partition("+")[2]
        backend = (f"{_service_name(admin)} ({driver}) + {_service_name(REDIS)}, {spec.workers} culm worker, "
                   "database reused")
    pipelines = got.pop("pipelines")  # every one was seen FINISHED, or a BenchFailure was raised
    out = summarise(spec, got.pop("times"), got.pop("nodes"), pipelines, pipelines, backend)
    out.update(got, interval_ms=round(spec.extra["interval"] * 1000), poller=spec.extra["poller"])
    if cluster_rss is not None:
        out["worker_peak_rss_mb"] = cluster_rss
    return out


def polled_specs(batch: Any, big: Any, latency: Any, *, distributed: bool) -> list[Any]:
    """``polled_<shape>_<interval>`` (the submitting thread polls) and ``polled_<shape>_proc10ms``
    (a second process polls) for the batch, the big pipeline and one pipeline; distributed:
    ``distributed_polled_<shape>_<db>_w2`` polled every 10 ms from the submitting process."""
    from bench.scenarios import Spec

    shapes = (("batch", batch), ("big", big), ("latency", latency))
    specs = []
    if not distributed:
        for name, base in shapes:
            for ms in (2, 10, 100):
                specs.append(Spec(f"polled_{name}_{ms}ms", base.shape, base.make, base.repeats, "polled",
                                  extra={"interval": ms / 1000, "poller": "thread"}))
            specs.append(Spec(f"polled_{name}_proc10ms", base.shape, base.make, base.repeats, "polled",
                              extra={"interval": 0.01, "poller": "process"}))
        return specs
    for name, base in shapes:
        for db in ("pg", "mariadb"):
            specs.append(Spec(f"distributed_polled_{name}_{db}_w2", base.shape, base.make, base.repeats,
                              "polled-distributed", 2,
                              extra={"interval": 0.01, "poller": "thread", "db": "mariadb" if db == "mariadb" else "pg"}))
    return specs
