"""``culm worker --metrics-port``: Prometheus metrics summed over a prefork pool's processes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from backends import REDIS, create_database, drop_database
from support import free_port, wait_until

import culm
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.storage import migrate

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]

HERE = Path(__file__).resolve().parent


def _tree(codes: list[str]) -> dict:
    start = EmptyStartEvent()
    node = start
    for code in codes:
        node = node.extend(ServiceActivity(component_code=code))
    node.extend(EmptyEndEvent())
    return build_tree(start)


def test_prefork_worker_serves_the_sum_of_its_pool(tmp_path: Path) -> None:
    db = create_database("postgres")
    migrate.upgrade_database(db)
    prefix = f"culmm{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "CULM_IMPORTS": "components", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - owned by the child
    worker = subprocess.Popen(
        [sys.executable, "-m", "culm.cli", "worker", "--db", db, "--broker", REDIS, "--prefix", prefix,
         "--concurrency", "2", "--pool", "prefork", "--metrics-port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        wait_until(lambda: " ready." in (tmp_path / "worker.log").read_text(errors="replace"), 60, 0.1,
                   what="the worker to be ready")
        with culm.Runtime(db, broker=REDIS, prefix=prefix) as rt:
            trees = [_tree(["t_echo", "t_echo", "t_fail"]) for _ in range(3)]
            for tree in trees:
                assert culm.api.run_pipeline(rt, tree).result

            def failed_everywhere() -> bool:
                states = [culm.api.get_pipeline_states(rt, t["id"]).data for t in trees]
                return all(any(c["state"] == "FAILED" for c in s[t["id"]]["children"].values())
                           for s, t in zip(states, trees, strict=True) if s)

            wait_until(failed_everywhere, 60, 0.1, what="every pipeline to reach its failing node")

        def scraped() -> str:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            return text if 'component="t_fail"' in text else ""

        text = wait_until(scraped, 30, 0.1, what="the failing component in the metrics")
        echo = re.search(r'culm_node_executions_total\{component="t_echo",hostname="[^"]+",kind="execute",'
                         r'result="success"\} ([0-9.]+)', text)
        assert echo and float(echo.group(1)) == 6.0, text[:3000]
        assert re.search(r'engine_execute_failed_count_total\{hostname="[^"]+",type="t_fail_legacy"\} 3\.0', text)
        assert "engine_node_execute_time_bucket" in text and "culm_engine_step_seconds_count" in text
        assert re.search(r'culm_abandoned_threads\{hostname="[^"]+"\} 0\.0', text)  # summed over live ones
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        drop_database(db)


def _outside_address() -> str | None:
    """This machine's address on its network (not loopback), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # UDP: no packet is sent; the kernel picks the outgoing address
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


def _answers(host: str, port: int) -> bool:
    try:
        return httpx.get(f"http://{host}:{port}/metrics", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_worker_metrics_stay_on_this_machine_unless_a_host_is_given(tmp_path: Path) -> None:
    """No token guards a worker's /metrics: by default only 127.0.0.1 serves them; `--metrics-host
    0.0.0.0` opens them to a scraper elsewhere."""
    outside = _outside_address()
    if outside is None:
        pytest.skip("this machine has no address but loopback")
    db = create_database("postgres")
    migrate.upgrade_database(db)
    prefix = f"culmm{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "CULM_IMPORTS": "components"}
    env.pop("CULM_METRICS_HOST", None)
    ports = {"default": free_port(), "all": free_port()}
    workers = {}
    for name, extra in (("default", []), ("all", ["--metrics-host", "0.0.0.0"])):
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        workers[name] = subprocess.Popen(
            [sys.executable, "-m", "culm.cli", "worker", "--db", db, "--broker", REDIS, "--prefix", prefix,
             "--pool", "solo", "--metrics-port", str(ports[name]), *extra],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
    try:
        for name, port in ports.items():
            wait_until(lambda port=port: _answers("127.0.0.1", port), 60, 0.1, what=f"the {name} worker's metrics")
        log = (tmp_path / "default.log").read_text(errors="replace")
        assert f"metrics on http://127.0.0.1:{ports['default']}/metrics" in log, log
        assert not _answers(outside, ports["default"])  # refused: bound to loopback only
        assert _answers(outside, ports["all"])
    finally:
        for worker in workers.values():
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers.values():
            worker.wait(30)
        drop_database(db)


def test_a_bad_metrics_port_is_one_line(tmp_path: Path) -> None:
    def worker(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "culm.cli", "worker", "--broker", REDIS, *args],
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=60, cwd=tmp_path)

    res = worker("--metrics-port", "70000")
    assert res.returncode == 2 and "argument --metrics-port: expected a port number from 1 to 65535, not 70000" \
        in res.stderr, res.stderr
    res = worker(CULM_METRICS_PORT="nine")
    assert res.returncode == 2 and "error: $CULM_METRICS_PORT: expected a port number, not 'nine'" in res.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = worker("--metrics-port", str(port), "--pool", "solo")
    assert res.returncode == 2, res.stderr
    assert f"error: cannot serve metrics on 127.0.0.1:{port}: " in res.stderr and "Traceback" not in res.stderr
