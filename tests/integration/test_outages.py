"""Connections cut under running ``culm worker`` processes, with no server restart.

The servers stay up; what breaks is the workers' connections, closed from the server's side:
the database's sessions (``pg_terminate_backend`` / MariaDB ``KILL``) or the broker's (Redis
``CLIENT KILL``, RabbitMQ ``rabbitmqctl close_connection``), in the middle of a batch of
pipelines. Only the connections of this module's own workers (and its own database) are cut, so
other tests running on the same servers are not disturbed.

Asserted: every pipeline finishes, each activity FINISHED once (first loop, no history), the calls
run again are at most those in flight when the connections were cut (a worker process starts a
call only while fewer than CULM_WORKER_THREADS of its calls are in flight), and every worker
reconnects and takes new work.
"""

from __future__ import annotations

import collections
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import culm_dist_components  # noqa: F401 - registers dist_sleep in the test process
import pytest
from backends import BACKENDS, DistributedBackend, reachable, unavailable
from crash_app import batch_tree_of
from support import wait_until
from test_faults import kill_sessions

from culm import api

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]

THREADS = 2  # CULM_WORKER_THREADS of this module's workers
POOL = 2 * 2 * THREADS  # two workers of --concurrency 2: the calls that may be in flight at once
COUNT, ACTS = 30, 8  # pipelines of batch_tree_of: 8 activities each


@pytest.fixture(scope="module", params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributedBackend]:
    name = request.param
    db_kind, broker, db_addr, broker_addr = BACKENDS[name]
    for host, port in (db_addr, broker_addr):
        if not reachable(host, port):
            unavailable(f"{name}: nothing listens on {host}:{port}")
    env: dict[str, str | None] = {"CULM_WORKER_THREADS": str(THREADS)}
    made = DistributedBackend(name, db_kind, broker, tmp_path_factory.mktemp(f"outage-{name}"), env)
    made.setup()
    try:
        made.start_workers(2)
        yield made
    finally:
        made.teardown()


# -- whose connections ------------------------------------------------------------------------


def _worker_pids(backend: DistributedBackend) -> set[int]:
    """The main and pool processes of the backend's live workers."""
    pids: set[int] = set()
    for i in backend.alive():
        pid = backend.workers[i].pid  # type: ignore[union-attr]
        pids.add(pid)
        children = Path(f"/proc/{pid}/task/{pid}/children")
        if children.exists():
            pids.update(int(p) for p in children.read_text().split())
    return pids


def _local_ports(pids: set[int], server_port: int) -> set[int]:
    """The local TCP ports of ``pids``' connections to ``server_port`` on this host."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"dport = :{server_port}"],
                         capture_output=True, text=True, timeout=10).stdout
    ports = set()
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        local = line.split()[2]  # Recv-Q Send-Q Local Peer Process
        if owners & pids:
            ports.add(int(local.rsplit(":", 1)[1]))
    return ports


def _cut_redis(backend: DistributedBackend) -> Callable[[], int]:
    ours = _local_ports(_worker_pids(backend), 6379)

    def cut() -> int:
        clients = subprocess.run(["redis-cli", "-p", "6379", "CLIENT", "LIST"], capture_output=True, text=True,
                                 timeout=10).stdout
        ids = [m.group(1) for line in clients.splitlines()
               if (m := re.search(r"\bid=(\d+) addr=[^ ]*:(\d+) ", line)) and int(m.group(2)) in ours]
        for client_id in ids:
            subprocess.run(["redis-cli", "-p", "6379", "CLIENT", "KILL", "ID", client_id], capture_output=True,
                           timeout=10)
        return len(ids)

    return cut


def _cut_rabbitmq(backend: DistributedBackend) -> Callable[[], int]:
    ours = _local_ports(_worker_pids(backend), 5672)
    listed = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "peer_port", "--no-table-headers"],
                            capture_output=True, text=True, timeout=30).stdout
    conns = [line.split()[0] for line in listed.splitlines() if line.split() and int(line.split()[-1]) in ours]

    def cut() -> int:
        # rabbitmqctl takes a second to start: close them all at once
        closing = [subprocess.Popen(["rabbitmqctl", "-q", "close_connection", conn, "culm outage test"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for conn in conns]
        return sum(1 for proc in closing if proc.wait(30) == 0)

    return cut


def _cutter(backend: DistributedBackend, what: str) -> Callable[[], int]:
    """What cuts the workers' connections (found now, while the workers idle) to ``what``."""
    if what == "database":
        return lambda: kill_sessions(backend.db_url)[0]
    if backend.broker_url.startswith("redis"):
        return _cut_redis(backend)
    return _cut_rabbitmq(backend)


def _batch_tree(seconds: float) -> dict[str, Any]:
    tree = batch_tree_of("dist_sleep")
    for act in tree["activities"].values():
        act["component"]["inputs"]["seconds"]["value"] = seconds
    return tree


# -- the test ---------------------------------------------------------------------------------


def _finished(rt: Any, root_id: str) -> bool:
    res = api.get_pipeline_states(rt, root_id)  # a read may hit the outage itself: poll again
    return bool(res.result) and res.data[root_id]["state"] == "FINISHED"


def _reconnected(backend: DistributedBackend, before: dict[int, int], what: str) -> None:
    for i in backend.alive():
        wait_until(lambda i=i: backend.worker_log(i).count(what) > before[i], 30, 0.1,
                   what=f"worker {i} to log {what!r} again")


@pytest.mark.parametrize("cut", ["database", "broker"])
def test_connections_cut_mid_batch(backend: DistributedBackend, cut: str) -> None:
    backend.ensure_workers(2)
    rt = backend.runtime()
    workers = backend.alive()
    connected = "Connected to " + backend.broker_url.split(":", 1)[0]
    connected_before = {i: backend.worker_log(i).count(connected) for i in workers}
    cut_connections = _cutter(backend, cut)
    # 0.15 s calls: 240 of them on 8 slots take ~4.5 s, room for the cut (at 0.05 s the batch
    # ended before the RabbitMQ connections were found and cut, once in a full CI run)
    trees = [_batch_tree(0.15) for _ in range(COUNT)]
    ours = {n for tree in trees for n in tree["activities"]}

    def executed() -> collections.Counter[str]:
        return collections.Counter({n: c for n, c in backend.executions().items() if n in ours})

    for tree in trees:
        assert api.run_pipeline(rt, tree).result
    wait_until(lambda: sum(executed().values()) >= 0.3 * COUNT * ACTS, 60, 0.01, what="30 % of the batch to run")
    cut_at = time.monotonic()
    closed = cut_connections()
    before = sum(executed().values())
    assert closed > 0, "no connection of the workers was found to cut"
    assert before < COUNT * ACTS, "the batch ended before the cut"

    left = [t["id"] for t in trees]
    for root_id in left:
        wait_until(lambda r=root_id: _finished(rt, r), 90, 0.1, what=f"pipeline {root_id} to finish after the cut")
    took = time.monotonic() - cut_at

    after = executed()
    assert set(after) == ours
    reruns = sum(c - 1 for c in after.values())
    for tree in trees[:3]:
        for node_id in tree["activities"]:
            assert api.get_node_histories(rt, node_id).data == []
    print(f"\n{backend.name}: cut {closed} {cut} connection(s) of the workers with {before} of {COUNT * ACTS} "
          f"calls started; {reruns} ran again (in flight at most {POOL}); all finished {took:.1f} s after the cut")
    assert reruns <= POOL
    assert backend.alive() == workers, "a worker exited when its connections were cut"
    if cut == "broker":
        _reconnected(backend, connected_before, connected)
    # Every worker still takes work: a second batch finishes.
    again = [batch_tree_of("dist_sleep") for _ in range(6)]
    for tree in again:
        assert api.run_pipeline(rt, tree).result
    for tree in again:
        wait_until(lambda r=tree["id"]: _finished(rt, r), 30, 0.1, what=f"pipeline {tree['id']} to finish")


def test_no_worker_running_shows_in_the_wait_reason(backend: DistributedBackend,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker stopped: the pipeline's entry says its steps are due and not taken, and names
    where they wait; once a worker starts it takes them and the reason goes away."""
    from culm.core import waits

    monkeypatch.setattr(waits, "STALLED_AFTER", 0.5)  # read in this (the submitting) process
    rt = backend.runtime()
    backend.stop_workers()
    try:
        tree = _batch_tree(0.0)
        assert api.run_pipeline(rt, tree).result
        root = tree["id"]

        def stalled() -> dict[str, Any] | None:
            res = api.get_pipeline_states(rt, root)
            found = res.data[root]["wait_reason"] if res.result else None
            return found if found and found["kind"] == "stalled" else None

        found = wait_until(stalled, 10, 0.1, what="the pipeline to say it is stalled")
        assert found["nodes"] == [tree["start_event"]["id"]]
    finally:
        backend.ensure_workers(2)
    wait_until(lambda: _finished(rt, root), 60, 0.1, what="the pipeline to finish once workers run")
    assert api.get_pipeline_states(rt, root).data[root]["wait_reason"] is None
