"""The benchmark scenarios: what each one builds, runs and times.

Every scenario runs in its own process (see :mod:`bench.one`), so the peak RSS it reports is its
own. A measurement starts right before the first ``api.run_pipeline`` (the trees are built before,
as a caller would have them) and stops at the moment every root pipeline is FINISHED.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.trees import chain_pipeline, executed_nodes, normal_pipeline, small_pipeline, wide_pipeline

REPO = Path(__file__).resolve().parents[1]


def culm_home() -> Path:
    """The directory this process imported ``culm`` from, symlinks kept: the checkout being
    measured. Under ``bench.ab --bench-here`` it is a scratch directory whose ``culm`` links to
    the other checkout's and whose ``bench`` to this one's, while REPO (this file, symlinks
    resolved) is this checkout; processes started for the measurement (``culm worker``, pollers)
    start there, with it first on their path, so that they run the same culm as this process."""
    import culm

    return Path(os.path.abspath(culm.__file__)).parent.parent


def home_env(**extra: str) -> tuple[Path, dict[str, str]]:
    """The working directory and environment for a process that must run :func:`culm_home`'s culm
    (``python -m`` and ``-c`` put their working directory first on ``sys.path``)."""
    home = culm_home()
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(home), env.get("PYTHONPATH", "")) if p)
    return home, env


FULL_REPEATS = 3
LATENCY_RUNS = 10
WAIT_TIMEOUT = float(os.environ.get("CULM_BENCH_TIMEOUT", "900"))

PG_ADMIN = os.environ.get("CULM_BENCH_PG", os.environ.get("CULM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
REDIS = os.environ.get("CULM_BENCH_REDIS", os.environ.get("CULM_TEST_REDIS", "redis://127.0.0.1:6379/0"))
WORKER_COUNTS = (1, 2, 4)
# Pool processes of each ``culm worker``: 1, so "N workers" is N processes running engine steps.
WORKER_CONCURRENCY = int(os.environ.get("CULM_BENCH_WORKER_CONCURRENCY", "1"))


class BenchFailure(Exception):
    """A run did not end with every root pipeline FINISHED."""


class Skipped(Exception):
    """The scenario cannot run here (a service is missing); the reason is reported, not raised."""


@dataclass
class Spec:
    """One line of output: a named scenario with its trees and how to run them."""

    name: str
    shape: str
    make: Callable[[], list[dict[str, Any]]]
    repeats: int
    backend: str = "embedded"  # or "distributed"
    workers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# -- the catalogue ------------------------------------------------------------------------------


def catalogue(scenario: str, quick: bool, repeats: int | None) -> list[Spec]:
    """The specs of a scenario name (``batch``, ``big``, ``chain``, ``latency``, ``scale``,
    ``distributed``, ``all``), full size or ``quick`` (smoke sizes, 1 repeat)."""
    reps = 1 if quick else max(FULL_REPEATS, repeats or FULL_REPEATS)
    if quick and repeats:
        reps = repeats
    batch_n = 10 if quick else 100
    big_b, big_len = (10, 10) if quick else (100, 10)
    chain_n = 50 if quick else 1000
    scale_sizes = (100,) if quick else (1000, 5000, 10000)

    def batch() -> list[Spec]:
        return [Spec("batch", f"{batch_n} x normal_pipeline() (17 nodes each), started together",
                     lambda: [normal_pipeline() for _ in range(batch_n)], reps)]

    def big() -> list[Spec]:
        return [Spec("big", f"wide_pipeline({big_b}, {big_len})", lambda: [wide_pipeline(big_b, big_len)], reps)]

    def chain() -> list[Spec]:
        return [Spec("chain", f"chain_pipeline({chain_n})", lambda: [chain_pipeline(chain_n)], reps)]

    def latency() -> list[Spec]:
        runs = reps if quick else max(LATENCY_RUNS, reps)
        return [Spec("latency", "one normal_pipeline() (17 nodes), submit to FINISHED",
                     lambda: [normal_pipeline()], runs)]

    def scale() -> list[Spec]:
        specs = []
        for n in scale_sizes:
            specs.append(Spec(f"scale_pipelines_{n}", f"{n} x small_pipeline() (start -> act -> end), started together",
                              lambda n=n: [small_pipeline() for _ in range(n)], reps))
        for n in scale_sizes:
            b = max(1, n // 10)
            specs.append(Spec(f"scale_wide_{n}", f"one wide_pipeline({b}, 10)", lambda b=b: [wide_pipeline(b, 10)], reps))
        for n in scale_sizes:
            specs.append(Spec(f"scale_chain_{n}", f"one chain_pipeline({n})", lambda n=n: [chain_pipeline(n)], reps))
        return specs

    def distributed() -> list[Spec]:
        specs = []
        for kind, builder in (("batch", batch), ("big", big)):
            base = builder()[0]
            for w in ((1, 2) if quick else WORKER_COUNTS):
                specs.append(Spec(f"distributed_{kind}_w{w}", base.shape, base.make, reps, "distributed", w))
        # Many pipelines at once (the lock contention a busy service sees): 500 x 17 nodes.
        many = 20 if quick else 500
        specs.append(Spec("distributed_many_w2", f"{many} x normal_pipeline() (17 nodes each), started together",
                          lambda: [normal_pipeline() for _ in range(many)], 1, "distributed", 2))
        return specs

    def polled() -> list[Spec]:
        from bench.polled import polled_specs

        return polled_specs(batch()[0], big()[0], latency()[0], distributed=False)

    def polled_distributed() -> list[Spec]:
        from bench.polled import polled_specs

        return polled_specs(batch()[0], big()[0], latency()[0], distributed=True)

    table = {"batch": batch, "big": big, "chain": chain, "latency": latency, "scale": scale,
             "distributed": distributed, "polled": polled, "polled_distributed": polled_distributed}
    if scenario == "all":
        return [s for fn in table.values() for s in fn()]
    if scenario not in table:
        raise SystemExit(f"unknown scenario {scenario!r}; choose from {', '.join([*table, 'all'])}")
    return table[scenario]()


# -- waiting for the end ------------------------------------------------------------------------


def root_states(rt: Any, ids: list[str]) -> dict[str, str]:
    """The state name of each root pipeline, read in one transaction (chunks of 500 ids)."""
    out: dict[str, str] = {}
    with rt.engine.store.reading() as unit:
        for i in range(0, len(ids), 500):
            for node_id, st in unit.get_states(ids[i:i + 500]).items():
                out[node_id] = st.name
    return out


def wait_all_finished(rt: Any, ids: list[str], t0: float, timeout: float) -> float:
    """Seconds from ``t0`` until every pipeline of ``ids`` is FINISHED; raises BenchFailure.

    Embedded: ``runtime.wait_idle`` (nothing queued or running any more), then a state check; the
    clock stops when the runtime went idle, as nothing can change a state after that. Otherwise
    (or if some are still not FINISHED), a tight poll of the root states.
    """
    deadline = t0 + timeout
    pending = list(ids)
    if rt.embedded and rt.dispatcher is not None:
        rt.wait_idle(max(0.0, deadline - time.perf_counter()))
        stopped = time.perf_counter()
        states = root_states(rt, pending)
        pending = [i for i in pending if states.get(i) != "FINISHED"]
        if not pending:
            return stopped - t0
    while True:
        states = root_states(rt, pending)
        pending = [i for i in pending if states.get(i) != "FINISHED"]
        now = time.perf_counter()
        if not pending:
            return now - t0
        stuck = {states.get(i) for i in pending} & {"FAILED", "REVOKED", "SUSPENDED"}
        if stuck or now > deadline:
            sample = {i: states.get(i) for i in pending[:5]}
            raise BenchFailure(f"{len(pending)} of {len(ids)} pipelines not FINISHED "
                               f"({'stuck' if stuck else f'after {timeout:.0f}s'}): {sample}")
        time.sleep(0.005 if rt.embedded else 0.02)


def verify(rt: Any, trees: list[dict[str, Any]]) -> int:
    """Check through the public API that every root is FINISHED; returns how many are."""
    from culm import api

    finished = 0
    for tree in trees:
        res = api.get_pipeline_states(rt, tree["id"])
        if not res.result:
            raise BenchFailure(f"get_pipeline_states({tree['id']}): {res.message}")
        if res.data.get(tree["id"], {}).get("state") == "FINISHED":
            finished += 1
    if finished != len(trees):
        raise BenchFailure(f"only {finished} of {len(trees)} pipelines FINISHED")
    return finished


def submit_and_wait(rt: Any, trees: list[dict[str, Any]], timeout: float = WAIT_TIMEOUT) -> float:
    from culm import api

    ids = [t["id"] for t in trees]
    t0 = time.perf_counter()
    for tree in trees:
        res = api.run_pipeline(rt, tree)
        if not res.result:
            raise BenchFailure(f"run_pipeline refused: {res.message}")
    return wait_all_finished(rt, ids, t0, timeout)


# -- embedded -----------------------------------------------------------------------------------


def run_embedded(spec: Spec) -> dict[str, Any]:
    import culm

    times: list[float] = []
    nodes = pipelines = finished = 0
    for _ in range(spec.repeats):
        trees = spec.make()
        nodes = sum(executed_nodes(t) for t in trees)
        pipelines = len(trees)
        workdir = tempfile.mkdtemp(prefix="culm-bench-")
        rt = culm.Runtime(f"sqlite:///{workdir}/bench.db")
        try:
            times.append(submit_and_wait(rt, trees))
            finished = verify(rt, trees)
        finally:
            rt.close()
            shutil.rmtree(workdir, ignore_errors=True)
        del trees
    return summarise(spec, times, nodes, pipelines, finished, "embedded (SQLite file, 8 threads)")


# -- distributed --------------------------------------------------------------------------------


def _reachable(url: str, default_port: int) -> tuple[bool, str]:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or default_port
    try:
        with socket.create_connection((host, port), timeout=1):
            return True, ""
    except OSError as exc:
        return False, f"nothing listens on {host}:{port} ({exc})"


def distributed_precheck() -> None:
    """Raise Skipped with a reason when PostgreSQL, Redis or the worker code is not there."""
    ok, why = _reachable(PG_ADMIN, 5432)
    if not ok:
        raise Skipped(f"PostgreSQL ({PG_ADMIN}): {why}")
    ok, why = _reachable(REDIS, 6379)
    if not ok:
        raise Skipped(f"Redis ({REDIS}): {why}")
    try:
        from culm.dispatch.celery import run_worker  # noqa: F401
    except ImportError as exc:
        raise Skipped(f"the distributed runtime is not importable: {exc}") from exc


class Cluster:
    """A fresh PostgreSQL database ``culm_bench_<rand>``, a private Redis queue prefix and N
    ``culm worker`` processes (``python -m culm worker``) importing ``bench.trees``."""

    def __init__(self, workers: int, admin: str = PG_ADMIN) -> None:
        self.n = workers
        self.admin = admin  # PostgreSQL, or MySQL/MariaDB (bench.polled)
        self.prefix = f"culmb{uuid.uuid4().hex[:8]}"
        self.db_url = ""
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="culm-bench-dist-"))

    def __enter__(self) -> Cluster:
        try:
            self._create_db()
            self._start_workers()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_db(self) -> None:
        from sqlalchemy import create_engine, text

        from culm.storage.migrate import upgrade
        from culm.storage.sql import SqlStore

        name = f"culm_bench_{uuid.uuid4().hex[:10]}"
        admin = create_engine(self.admin, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {name}"))
        except Exception as exc:  # noqa: BLE001
            raise Skipped(f"cannot create a database at {_service_name(self.admin)}: {type(exc).__name__}: {exc}") from exc
        finally:
            admin.dispose()
        self.db_url = admin.url.set(database=name).render_as_string(hide_password=False)
        store = SqlStore(self.db_url, create=False)
        try:
            upgrade(store)
        finally:
            store.dispose()

    def _start_workers(self, timeout: float = 60.0) -> None:
        home, env = home_env(CULM_IMPORTS="bench.trees")  # the culm this process measures
        for i in range(self.n):
            log = open(self.workdir / f"worker-{i}.log", "wb")  # noqa: SIM115 - owned by the child
            cmd = [sys.executable, "-m", "culm", "worker", "--db", self.db_url, "--broker", REDIS,
                   "--prefix", self.prefix, "--concurrency", str(WORKER_CONCURRENCY), "--import", "bench.trees",
                   "--loglevel", "INFO", *(["--pool", os.environ["CULM_BENCH_POOL"]] if os.environ.get("CULM_BENCH_POOL") else [])]
            self.procs.append(subprocess.Popen(cmd, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))
            log.close()
        # Ready = Celery logged " ready." (its consumer declared the queues): a message published
        # before that is routed nowhere on Redis and only the relay brings it back, after its grace.
        deadline = time.monotonic() + timeout
        for i, proc in enumerate(self.procs):
            log_path = self.workdir / f"worker-{i}.log"
            while True:
                text = log_path.read_text(errors="replace")
                if " ready." in text:
                    break
                if proc.poll() is not None:
                    raise Skipped(f"culm worker exited with {proc.returncode}: {text[-800:].strip()}")
                if time.monotonic() > deadline:
                    raise Skipped(f"culm worker {i} not ready after {timeout:.0f}s: {text[-400:].strip()}")
                time.sleep(0.05)

    def worker_peak_rss_mb(self) -> float:
        """Largest VmHWM of any worker process (parent or pool child), in MB."""
        peak = 0
        for proc in self.procs:
            for pid in [proc.pid, *_children(proc.pid)]:
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]))
                except OSError:
                    pass
        return round(peak / 1024, 1)

    def count_in_logs(self, text: str) -> int:
        """Lines of the workers' logs that contain ``text``."""
        return sum(line.count(text) for i in range(len(self.procs))
                   for line in (self.workdir / f"worker-{i}.log").read_text(errors="replace").splitlines())

    def logs_tail(self) -> str:
        out = []
        for i in range(len(self.procs)):
            text = (self.workdir / f"worker-{i}.log").read_text(errors="replace")
            out.append(f"worker {i}: {text[-600:].strip()}")
        return "\n".join(out)

    def close(self) -> None:
        import signal

        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.procs = []
        self._delete_queues()
        if self.db_url:
            self._drop_db()
            self.db_url = ""
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _drop_db(self) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        name = make_url(self.db_url).database
        admin = create_engine(self.admin, isolation_level="AUTOCOMMIT")
        force = " WITH (FORCE)" if admin.dialect.name == "postgresql" else ""
        try:
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
        except Exception as exc:  # noqa: BLE001 - cleanup only
            print(f"bench: could not drop {name}: {exc}", file=sys.stderr)
        finally:
            admin.dispose()

    def _delete_queues(self) -> None:
        from culm.dispatch.celery import delete_queues

        delete_queues(REDIS, self.prefix)


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _service_name(url: str) -> str:
    """What a database or broker URL points at, for the report (CULM_BENCH_PG / CULM_BENCH_REDIS
    may name MariaDB or RabbitMQ instead)."""
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    return {"postgresql": "PostgreSQL", "mysql": "MySQL/MariaDB", "mariadb": "MariaDB", "redis": "Redis",
            "amqp": "RabbitMQ"}.get(scheme, scheme)


def run_distributed(spec: Spec) -> dict[str, Any]:
    import culm

    distributed_precheck()
    times: list[float] = []
    nodes = pipelines = finished = victims = relayed = 0
    worker_rss = 0.0
    for _ in range(spec.repeats):
        trees = spec.make()
        nodes = sum(executed_nodes(t) for t in trees)
        pipelines = len(trees)
        with Cluster(spec.workers) as cluster:
            rt = culm.Runtime(cluster.db_url, broker=REDIS, prefix=cluster.prefix)
            try:
                times.append(submit_and_wait(rt, trees, timeout=min(WAIT_TIMEOUT, 300)))
                finished = verify(rt, trees)
            except BenchFailure as exc:
                raise BenchFailure(f"{exc}\n{cluster.logs_tail()}") from None
            finally:
                rt.close()
            worker_rss = max(worker_rss, cluster.worker_peak_rss_mb())
            victims += cluster.count_in_logs("deadlock victim")
            relayed += cluster.count_in_logs("relayed ")
    backend = f"{_service_name(PG_ADMIN)} + {_service_name(REDIS)}, {spec.workers} culm worker x {WORKER_CONCURRENCY} process"
    out = summarise(spec, times, nodes, pipelines, finished, backend)
    out["workers"] = spec.workers
    out["worker_concurrency"] = WORKER_CONCURRENCY
    out["worker_peak_rss_mb"] = worker_rss
    out["deadlock_victims"] = victims  # batches the database rolled back to break a deadlock (run again)
    out["relay_rounds"] = relayed  # times a relay re-published tasks whose message led to no run
    return out


# -- results ------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def summarise(spec: Spec, times: list[float], nodes: int, pipelines: int, finished: int, backend: str) -> dict[str, Any]:
    median = statistics.median(times)
    out: dict[str, Any] = {
        "scenario": spec.name,
        "nodes": nodes,
        "median_s": round(median, 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "nodes_per_s": round(nodes / median, 1) if median > 0 else None,
        "peak_rss_mb": peak_rss_mb(),
        "repeats": len(times),
        "backend": backend,
        "pipelines": pipelines,
        "finished": finished,
        "ok": finished == pipelines,
        "shape": spec.shape,
    }
    if spec.name == "latency":
        out["median_ms"] = round(median * 1000, 2)
    return out


def run_spec(spec: Spec) -> dict[str, Any]:
    """Run one spec in this process; failures and skips come back as a result line."""
    base = {"scenario": spec.name, "backend": spec.backend, "shape": spec.shape, "repeats": spec.repeats}
    try:
        if spec.backend == "distributed":
            return run_distributed(spec)
        if spec.backend.startswith("polled"):
            from bench.polled import run_polled

            return run_polled(spec)
        return run_embedded(spec)
    except Skipped as exc:
        return {**base, "ok": None, "skipped": str(exc)}
    except BenchFailure as exc:
        return {**base, "ok": False, "error": str(exc), "peak_rss_mb": peak_rss_mb()}
