"""The metrics page of `culm worker --metrics-port` bounds the connections clients hold.

Found probing (session 16): prometheus-client's server starts a thread per connection with no time
limit; 500 connections that sent half a request each held 500 threads of the worker for ever.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support import free_port, wait_until

from culm.web import worker_metrics

pytestmark = pytest.mark.timeout(120)

SERVE = """
import sys, time
import culm.web.worker_metrics as m
m.CONNECTION_SECONDS = 2.0  # the test's patience; the bound is the same at 10 s
print(m.start_worker_metrics(int(sys.argv[1]), "solo"), flush=True)
time.sleep(600)
"""


def _open(conn: socket.socket) -> bool:
    conn.setblocking(False)
    try:
        return conn.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True  # nothing to read, not closed
    except ConnectionResetError:
        return False


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def test_half_sent_requests_from_one_or_many_addresses_are_bounded_and_timed_out(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    held: list[socket.socket] = []
    try:
        assert "metrics on http://127.0.0.1:" in (proc.stdout.readline() if proc.stdout else "")
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: httpx.get(url, timeout=5).status_code == 200, 30, 0.1, what="the metrics page")
        threads_before = _threads(proc.pid)

        def half_request(source: str) -> socket.socket:
            conn = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            held.append(conn)
            return conn

        one_client = [half_request("127.0.3.1") for _ in range(10)]
        wait_until(
            lambda: sum(_open(c) for c in one_client) == worker_metrics.MAX_CONNECTIONS_PER_CLIENT,
            10,
            0.05,
            what="the connections of one client past its bound to be closed",
        )
        many = [half_request(f"127.0.4.{n + 1}") for n in range(worker_metrics.MAX_CONNECTIONS + 8)]
        assert sum(_open(c) for c in held) <= worker_metrics.MAX_CONNECTIONS
        assert _threads(proc.pid) <= threads_before + worker_metrics.MAX_CONNECTIONS
        # Held too long, every one of them is closed: the page answers again.
        wait_until(
            lambda: not any(_open(c) for c in one_client + many),
            30,
            0.1,
            what="the held connections to close",
        )
        time.sleep(0.1)
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200 and "culm_" in page.text
    finally:
        for conn in held:
            conn.close()
        proc.kill()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err[-2000:]  # a client gone or timed out is no error of the worker's
