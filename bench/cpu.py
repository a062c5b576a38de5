"""Where the CPU of one batch run goes: ``python -m bench.cpu embedded|distributed [--workers N]``.

``embedded``: per-thread CPU clocks of the caller (``run_pipeline``), the engine thread and the
user code, for the batch run together and for submitting first, then running.
``distributed``: CPU seconds of the ``culm worker`` processes (main and pool processes apart), the
bench database's PostgreSQL backends (or MariaDB's server process), Redis and the submitting
process during one batch on fresh workers, and with ``--batches N`` further batches on the same
workers (read from ``/proc/<pid>/stat``); the pool processes' main threads (Celery's part in them)
apart; on PostgreSQL, the backends' CPU by the process group of their client (matched through
``pg_stat_activity.client_port``). ``--polled MS``: the submitting thread polls
``get_pipeline_states`` of every pending root every MS ms as users do (``bench.polled``), and
its CPU is split into submitting and polling.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.scenarios import PG_ADMIN, REDIS, Cluster, _children, submit_and_wait
from bench.trees import normal_pipeline


def _proc_cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def _pids_with(word: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if word in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _db_server_word() -> str:
    """What the database server's processes have in their command line: PostgreSQL's backends
    (``postgres: ...``), or MariaDB's one server process, ``mariadbd`` (``CULM_BENCH_PG`` a MySQL
    URL; that process serves every client on the machine, so its figure counts theirs too)."""
    return "mariadbd" if "mysql" in PG_ADMIN.split(":", 1)[0] else "postgres:"


def _db_label() -> str:
    return "MariaDB server (all clients)" if _db_server_word() == "mariadbd" else "PostgreSQL (this database's backends)"


def _db_pids(server: str, database: str) -> list[int]:
    """The database server's processes that count: on PostgreSQL the backends of ``database``
    only (their command line names it; other clients of the server are left out), on MariaDB its
    one process."""
    pids = _pids_with(server)
    if server != "postgres:":
        return pids
    return [pid for pid in pids if f" {database} " in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
    except OSError:
        return ""


def _thread_cpu(pids: list[int], main_thread: bool) -> float:
    """CPU seconds of the processes' main threads (``main_thread``) or of their other threads."""
    total = 0
    for pid in pids:
        try:
            tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue
        for tid in tids:
            if (tid == pid) != main_thread:
                continue
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _local_ports(pids: list[int]) -> dict[int, int]:
    """The local TCP ports of the processes' sockets, each with its process (from ``/proc``)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    link = os.readlink(fd)
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
        except OSError:
            continue
    ports: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                ports[int(fields[1].rsplit(":", 1)[1], 16)] = inodes[fields[9]]
    return ports


def _backends_by_client(admin: str, database: str) -> dict[int, int]:
    """PostgreSQL: each backend of ``database`` with its client's local TCP port."""
    from sqlalchemy import create_engine, text

    engine = create_engine(admin)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT pid, client_port FROM pg_stat_activity WHERE datname = :d"),
                                {"d": database}).all()
    finally:
        engine.dispose()
    return {int(pid): int(port) for pid, port in rows if port is not None}


def _db_by_client(backends: dict[int, float], database: str, clients: dict[str, list[int]]) -> dict[str, float]:
    """PostgreSQL: the CPU each backend used (``backends``: pid -> CPU seconds) summed by the
    group of processes its client belongs to."""
    ports = _local_ports([pid for pids in clients.values() for pid in pids])
    group_of = {pid: name for name, pids in clients.items() for pid in pids}
    out: collections.Counter[str] = collections.Counter()
    for pid, port in _backends_by_client(PG_ADMIN, database).items():
        if pid in backends:
            out[group_of.get(ports.get(port, -1), "others")] += backends[pid]
    return dict(out)


def distributed(workers: int, pipelines: int, batches: int = 1, interval: float | None = None) -> None:
    """One batch on fresh workers (as ``distributed_batch_w2`` measures), then ``batches - 1``
    more on the same workers; CPU seconds of each, per group of processes.

    ``interval``: the submitting thread polls ``api.get_pipeline_states`` of every pending root
    every ``interval`` seconds after submitting, as ``bench.polled`` (and users) do, instead of
    the bench's light root-state poll; the submitter's CPU is then split into submitting and
    polling. On PostgreSQL the backends' CPU is also split by the process group of their client.
    """
    from sqlalchemy.engine import make_url

    import culm

    with Cluster(workers) as cluster:
        rt = culm.Runtime(cluster.db_url, broker=REDIS, prefix=cluster.prefix)
        try:
            mains = [p.pid for p in cluster.procs]
            pools = [q for p in mains for q in _children(p)]
            groups = {"worker main processes": mains, "pool processes": pools,
                      "Redis": _pids_with("redis-server")}
            server, database = _db_server_word(), make_url(cluster.db_url).database or ""
            for batch in range(batches):
                trees = [normal_pipeline() for _ in range(pipelines)]
                db_before = {pid: _proc_cpu([pid]) for pid in _db_pids(server, database)}
                before = {name: _proc_cpu(pids) for name, pids in groups.items()}
                celery_in_pools = _thread_cpu(pools, main_thread=True)
                own, thread = time.process_time(), time.thread_time()
                elapsed, phases = _one_batch(rt, trees, interval)
                own, thread = time.process_time() - own, time.thread_time() - thread
                # Backends that appeared during the run count in full; older ones by their increase.
                db = {pid: _proc_cpu([pid]) - db_before.get(pid, 0.0) for pid in _db_pids(server, database)}
                used = {name: _proc_cpu(pids) - before[name] for name, pids in groups.items()}
                celery_in_pools = _thread_cpu(pools, main_thread=True) - celery_in_pools
                shown = ", ".join(f"{name} {cpu:.2f}" for name, cpu in used.items())
                print(f"{pipelines} x normal_pipeline, {workers} workers, batch {batch + 1}"
                      f"{' (fresh workers)' if batch == 0 else ''}: {elapsed:.3f} s wall; CPU seconds: {shown}, "
                      f"{_db_label()} {sum(db.values()):.2f}, submitter {own:.2f}", flush=True)
                detail = [f"pool processes' main threads (Celery) {celery_in_pools:.2f}",
                          f"submitter's other threads {max(0.0, own - thread):.2f}"]
                if phases is not None:
                    detail.insert(0, f"submitting {phases[1]:.2f} CPU-s in {phases[0]:.3f} s wall, "
                                     f"polling {phases[2]:.2f} CPU-s ({phases[3]} polls)")
                if server == "postgres:":
                    split = _db_by_client(db, database, {"workers' pool processes": pools,
                                                         "workers' main processes": mains,
                                                         "submitter": [os.getpid()]})
                    detail.append("PostgreSQL by client: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(split.items())))
                print("    " + "; ".join(detail), flush=True)
        finally:
            rt.close()


def _one_batch(rt: Any, trees: list[dict[str, Any]], interval: float | None) -> tuple[float, tuple[float, float, float, int] | None]:
    """Seconds until every pipeline of ``trees`` is FINISHED; with ``interval``, also the
    submitting phase's wall and CPU seconds, the polling's CPU seconds and its polls."""
    if interval is None:
        return submit_and_wait(rt, trees, timeout=300), None
    from bench.polled import poll_until_finished
    from culm import api

    t0, c0 = time.perf_counter(), time.thread_time()
    for tree in trees:
        if not api.run_pipeline(rt, tree).result:
            raise RuntimeError("run_pipeline refused a bench tree")
    submitted, c1 = time.perf_counter() - t0, time.thread_time()
    polls = [0]
    get = api.get_pipeline_states

    def counted(*args: Any, **kwargs: Any) -> Any:
        polls[0] += 1
        return get(*args, **kwargs)

    api.get_pipeline_states = counted  # type: ignore[assignment]
    try:
        elapsed = poll_until_finished(rt, [t["id"] for t in trees], interval, t0, 300)
    finally:
        api.get_pipeline_states = get  # type: ignore[assignment]
    return elapsed, (submitted, c1 - c0, time.thread_time() - c1, polls[0])


def embedded(pipelines: int) -> None:
    import culm
    from culm import api
    from culm.dispatch import threads

    spent: collections.defaultdict[str, float] = collections.defaultdict(float)
    run_batch = threads.ThreadDispatcher._run_batch
    pool_submit = threads._UserCodePool.submit

    def timed_batch(self: Any, batch: Any) -> None:
        t = time.thread_time()
        try:
            run_batch(self, batch)
        finally:
            spent["engine"] += time.thread_time() - t
            spent["batches"] += 1

    def timed_submit(self: Any, item: Any, call: Any) -> None:
        def run() -> Any:
            t = time.thread_time()
            try:
                return call()
            finally:
                spent["user code"] += time.thread_time() - t
        pool_submit(self, item, run)

    threads.ThreadDispatcher._run_batch = timed_batch  # type: ignore[method-assign]
    threads._UserCodePool.submit = timed_submit  # type: ignore[method-assign]
    try:
        for mode in ("together", "submit first"):
            spent.clear()
            trees = [normal_pipeline() for _ in range(pipelines)]
            workdir = tempfile.mkdtemp(prefix="culm-bench-cpu-")
            url = f"sqlite:///{workdir}/bench.db"
            try:
                if mode == "together":
                    rt = culm.Runtime(url)
                    caller = time.thread_time()
                    elapsed = submit_and_wait(rt, trees)
                    caller = time.thread_time() - caller
                else:
                    submitter = culm.Runtime(url, workers=0)
                    caller = time.thread_time()
                    for tree in trees:
                        api.run_pipeline(submitter, tree)
                    caller = time.thread_time() - caller
                    submitter.close()
                    rt = culm.Runtime(url)
                    t0 = time.perf_counter()
                    rt.wait_idle(60)
                    elapsed = time.perf_counter() - t0
                rt.close()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            run_wall = "engine wall" if mode == "submit first" else "wall"
            print(f"{mode:>12}: {run_wall} {elapsed:.3f} s; CPU seconds: caller {caller:.3f}, "
                  f"engine thread {spent['engine']:.3f} in {int(spent['batches'])} batches, "
                  f"user code {spent['user code']:.3f}")
    finally:
        threads.ThreadDispatcher._run_batch = run_batch  # type: ignore[method-assign]
        threads._UserCodePool.submit = pool_submit  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu")
    parser.add_argument("mode", choices=["embedded", "distributed"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pipelines", type=int, default=100)
    parser.add_argument("--batches", type=int, default=1, help="distributed: batches on the same workers")
    parser.add_argument("--polled", type=float, default=None, metavar="MS",
                        help="distributed: poll get_pipeline_states of every pending root every MS ms, as users do")
    args = parser.parse_args(argv)
    if args.mode == "embedded":
        embedded(args.pipelines)
    else:
        distributed(args.workers, args.pipelines, args.batches,
                    None if args.polled is None else args.polled / 1000)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
