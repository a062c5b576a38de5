"""Where the CPU of one batch run goes: ``python -m bench.cpu embedded|distributed [--workers N]``.

``embedded``: per-thread CPU clocks of the caller (``run_pipeline``), the engine thread and the
user code, for the batch run together and for submitting first, then running.
``distributed``: CPU seconds of the ``culm worker`` processes (main and pool processes apart), the
bench database's PostgreSQL backends (or MariaDB's server process), Redis and the submitting
process during one batch on fresh workers, and with ``--batches N`` further batches on the same
workers (read from ``/proc/<pid>/stat``).
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


def distributed(workers: int, pipelines: int, batches: int = 1) -> None:
    """One batch on fresh workers (as ``distributed_batch_w2`` measures), then ``batches - 1``
    more on the same workers; CPU seconds of each, per group of processes."""
    from sqlalchemy.engine import make_url

    import culm

    with Cluster(workers) as cluster:
        rt = culm.Runtime(cluster.db_url, broker=REDIS, prefix=cluster.prefix)
        try:
            mains = [p.pid for p in cluster.procs]
            groups = {"worker main processes": mains, "pool processes": [q for p in mains for q in _children(p)],
                      "Redis": _pids_with("redis-server")}
            server, database = _db_server_word(), make_url(cluster.db_url).database or ""
            for batch in range(batches):
                trees = [normal_pipeline() for _ in range(pipelines)]
                db_before = set(_db_pids(server, database))
                before = {name: _proc_cpu(pids) for name, pids in groups.items()}
                db_cpu_before = _proc_cpu(list(db_before))
                own = time.process_time()
                elapsed = submit_and_wait(rt, trees, timeout=300)
                own = time.process_time() - own
                db_after = set(_db_pids(server, database))
                # Backends that appeared during the run count in full; older ones by their increase.
                db = _proc_cpu(list(db_before)) - db_cpu_before + _proc_cpu(list(db_after - db_before))
                used = {name: _proc_cpu(pids) - before[name] for name, pids in groups.items()}
                shown = ", ".join(f"{name} {cpu:.2f}" for name, cpu in used.items())
                print(f"{pipelines} x normal_pipeline, {workers} workers, batch {batch + 1}"
                      f"{' (fresh workers)' if batch == 0 else ''}: {elapsed:.3f} s wall; CPU seconds: {shown}, "
                      f"{_db_label()} {db:.2f}, submitter {own:.2f}", flush=True)
        finally:
            rt.close()


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
    args = parser.parse_args(argv)
    if args.mode == "embedded":
        embedded(args.pipelines)
    else:
        distributed(args.workers, args.pipelines, args.batches)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
