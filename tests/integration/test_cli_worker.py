"""`culm worker` itself: pool, prefix and queue-suffix options."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import culm_dist_components  # noqa: F401 - the test process builds trees with the same codes
import pytest
from backends import BACKENDS, REPO, DistributedBackend, reachable, unavailable
from support import wait_until

from culm import api
from culm.builder import (
    ConvergeGateway,
    EmptyEndEvent,
    EmptyStartEvent,
    ParallelGateway,
    ServiceActivity,
    build_tree,
)

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(120)]


class CliWorkers(DistributedBackend):
    """Workers started as `culm worker --pool solo --queue-suffix cli`."""

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "culm.cli", "worker", "--db", self.db_url, "--broker", self.broker_url,
                "--prefix", self.prefix, "--queue-suffix", "cli", "--pool", "solo", "--loglevel", "INFO"]


@contextlib.contextmanager
def started(request: pytest.FixtureRequest, tmp_path: Any, kind: type[DistributedBackend], workers: int) -> Iterator[Any]:
    """A backend of ``kind`` on the services ``request.param`` names, with ``workers`` workers."""
    db_kind, broker, *addresses = BACKENDS[request.param]
    for host, port in addresses:
        if not reachable(host, port):
            unavailable(f"{request.param}: nothing listens on {host}:{port}")
    backend = kind(request.param, db_kind, broker, tmp_path)
    try:
        backend.setup()
        backend.start_workers(workers)
        yield backend
    finally:
        backend.teardown()


@pytest.fixture(params=sorted(BACKENDS))
def cli_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    with started(request, tmp_path, CliWorkers, 2) as backend:
        yield backend


def test_solo_workers_on_a_queue_run_a_parallel_pipeline(cli_backend):
    start, fork, join, end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    branches = [ServiceActivity(component_code="dist_sleep") for _ in range(3)]
    start.extend(fork).connect(*branches).to(fork).converge(join).extend(end)
    tree = build_tree(start)
    rt = cli_backend.runtime()
    assert api.run_pipeline(rt, tree, queue="cli").result

    def finished() -> bool:
        return api.get_pipeline_states(rt, tree["id"]).data.get(tree["id"], {}).get("state") == "FINISHED"

    wait_until(finished, 60, 0.1, what="the pipeline to finish on the cli queue")
    pids = {api.get_execution_data_outputs(rt, b.id).data["pid"] for b in branches}
    workers = {p.pid for p in cli_backend.workers if p is not None}
    assert pids <= workers  # solo: the task ran in the worker process itself, no pool child
    assert all(cli_backend.executions()[b.id] == 1 for b in branches)


def test_culm_workers_lists_the_live_worker_processes(cli_backend):
    """Each solo worker registers its one process; `culm workers` lists them with host, pid and a
    recent beat, and a worker stopped cleanly leaves the registry."""

    def listed() -> list[dict]:
        out = subprocess.run([sys.executable, "-m", "culm.cli", "workers", "--db", cli_backend.db_url, "--json"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    pids = {p.pid for p in cli_backend.workers if p is not None}
    rows = wait_until(lambda: (found := listed()) and {r["pid"] for r in found} == pids and found, 30, 0.2,
                      what="both workers to register")
    assert all(r["host"] == socket.gethostname() and r["alive"] and 0 <= r["silent_for"] < 3 for r in rows)
    assert all(r["prefix"] == cli_backend.prefix and r["threads"] == 8 for r in rows)
    text = subprocess.run([sys.executable, "-m", "culm.cli", "workers", "--db", cli_backend.db_url], cwd=REPO,
                          capture_output=True, text=True, timeout=60).stdout.splitlines()
    line = re.compile(rf"{re.escape(socket.gethostname())} pid (\d+)  alive, last beat \d+\.\d s ago, 8 user-code threads, "
                      rf"prefix {cli_backend.prefix}  \[.+\]")
    assert {int(m.group(1)) for m in map(line.fullmatch, text) if m} == pids, text
    first = cli_backend.workers[0]
    assert first is not None
    cli_backend.stop_worker(0)  # SIGTERM: a warm shutdown
    assert {r["pid"] for r in listed()} == pids - {first.pid}


@pytest.fixture(params=sorted(BACKENDS))
def prefork_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    with started(request, tmp_path, DistributedBackend, 1) as backend:  # prefork, 2 pool processes
        yield backend


def test_culm_workers_lists_the_pool_processes_before_any_task(prefork_backend):
    """A prefork worker's pool processes register when they start, not at their first task (they
    were missing from `culm workers` until work came): with nothing submitted, the list holds the
    worker and its two pool processes, each alive."""
    [worker] = [p for p in prefork_backend.workers if p is not None]

    def listed() -> list[dict]:
        out = subprocess.run([sys.executable, "-m", "culm.cli", "workers", "--db", prefork_backend.db_url, "--json"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    rows = wait_until(lambda: len(found := listed()) == 3 and found, 30, 0.5, what="the worker and its 2 pool processes")
    assert worker.pid in {r["pid"] for r in rows} and all(r["alive"] for r in rows)
    children = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True).stdout.split()
    assert {r["pid"] for r in rows} == {worker.pid, *map(int, children)}
