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
from support import wait_until

import culm
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.storage import migrate

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]

HERE = Path(__file__).resolve().parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    port = _port()
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
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        drop_database(db)
