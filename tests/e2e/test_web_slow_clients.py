"""Clients that send a request slowly, or never finish it, cannot hold `culm serve`'s connections.

Found probing (session 16): uvicorn sets no time to receive a request. The per-client bound
(`MAX_CONNECTIONS_PER_CLIENT`) stops one address; one connection from each of many addresses,
each having sent part of a request's head (or a body that never comes), was held for ever: each a
file descriptor, until the service had none left. Now a request's head must arrive within
`--request-timeout` of its first byte and its body at `MIN_BODY_RATE` bytes a second after that.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from support import wait_until
from test_web_cli import _response, _serve, _stop

from culm.web.connections import MIN_BODY_RATE

pytestmark = pytest.mark.timeout(180)


def _closed(conn: socket.socket) -> bytes | None:
    """What the server sent before closing ``conn`` (b"" for nothing), or None while it is open."""
    conn.setblocking(False)
    data = b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except BlockingIOError:
        return None
    except ConnectionResetError:
        pass
    return data


def test_requests_that_do_not_arrive_in_time_from_many_addresses_are_answered_408(tmp_path: Path) -> None:
    proc, url = _serve(tmp_path, "--no-auth", "--trusted-proxies", "", "--request-timeout", "2")
    port = int(url.rsplit(":", 1)[1])
    head = b"GET /api/v1/me HTTP/1.1\r\nHost: localhost\r\n"
    post = b"POST /api/v1/pipelines HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    held: dict[str, list[socket.socket]] = {"silent": [], "half a head": [], "half a body": []}
    try:
        for n in range(150):  # one connection per address: the per-client bound never counts past 1
            conn = socket.create_connection(
                ("127.0.0.1", port), timeout=30, source_address=(f"127.0.1.{n + 10}", 0)
            )
            kind = list(held)[n % 3]
            held[kind].append(conn)
            if kind == "half a head":
                conn.sendall(head)
            elif kind == "half a body":
                conn.sendall(post + b'Content-Length: 100000\r\n\r\n{"tree": ')
        trickler = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=("127.0.2.1", 0))
        trickled = 0
        started = time.monotonic()
        # A byte of head every 0.2 s: never a gap near the timeout, but the head never ends in it either.
        while _closed(trickler) is None and time.monotonic() - started < 60:
            trickler.setblocking(True)
            try:
                trickler.sendall(b"X-Pad: 1\r\n"[trickled % 10 : trickled % 10 + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            trickled += 1
            time.sleep(0.2)
        assert time.monotonic() - started < 30, "a head trickled a byte at a time was never timed out"
        answers: dict[socket.socket, bytes] = {}

        def all_closed() -> bool:
            for conn in (conn for conns in held.values() for conn in conns if conn not in answers):
                if (answer := _closed(conn)) is not None:
                    answers[conn] = answer
            return len(answers) == 150

        wait_until(all_closed, 60, 0.2, what="every connection whose request never arrived to be closed")
        for kind in ("half a head", "half a body"):
            for conn in held[kind]:
                answer = answers[conn]
                assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), (kind, answer)
                assert b"the request did not arrive in time: its head must arrive within 2 s" in answer
        # A request sent in time on a connection that idled past the timeout after a response is
        # served (the idle time between requests is uvicorn's keep-alive, 75 s), and so is a body
        # arriving in pieces within the deadline.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(head + b"\r\n")
            assert _response(conn).startswith(b"HTTP/1.1 200")
            time.sleep(3)  # the client idles: not a request arriving slowly
            conn.sendall(head[:20])
            time.sleep(1)
            conn.sendall(head[20:] + b"\r\n")
            assert _response(conn).startswith(b"HTTP/1.1 200")
            body = b'{"tree": {"id": "not a tree"}}'
            conn.sendall(post + b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
            time.sleep(1)
            conn.sendall(body[10:])
            assert _response(conn).startswith(b"HTTP/1.1 422")
    finally:
        for conns in held.values():
            for conn in conns:
                conn.close()
        _stop(proc)
    assert MIN_BODY_RATE >= 1_000  # a body's bytes give it time at this rate: 4 MiB at 1 kB/s is 70 min


def test_request_timeout_must_be_a_positive_number(tmp_path: Path) -> None:
    import subprocess
    import sys

    for option in ("--request-timeout", "--answer-timeout"):
        for bad in ("0", "-1", "nan", "soon"):
            done = subprocess.run(
                [sys.executable, "-m", "culm.cli", "serve", option, bad],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 2 and option in done.stderr, (option, bad, done.stderr)


def _three_big_answers_asked(tmp_path: Path, timeout: str, *more: str) -> tuple[Any, str, socket.socket, int]:
    """`culm serve --request-timeout TIMEOUT` holding a pipeline whose tree is 3 MB, and a client
    with a small receive buffer that has asked for that tree three times at once: more than the
    kernel's buffers take (4 MB at most), so the rest waits in the server's memory. The server,
    the tree's URL, the client's socket, the size of one answer's body."""
    import httpx
    from web_support import divide_tree

    proc, url = _serve(tmp_path, "--no-auth", "--trusted-proxies", "", "--request-timeout", timeout, *more)
    tree = divide_tree(1)
    tree["data"] = {"inputs": {"${big}": {"type": "plain", "value": "x" * 3_000_000}}, "outputs": {}}
    try:
        assert httpx.post(url + "/api/v1/pipelines", json={"tree": tree}, timeout=60).status_code == 201
        size = len(httpx.get(f"{url}/api/v1/pipelines/{tree['id']}/tree", timeout=60).content)
        request = f"GET /api/v1/pipelines/{tree['id']}/tree HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
        conn = socket.socket()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        conn.sendall(request * 3)
    except BaseException:
        _stop(proc)
        raise
    return proc, f"{url}/api/v1/pipelines/{tree['id']}/tree", conn, size


def test_an_answer_left_unread_has_its_connection_dropped(tmp_path: Path) -> None:
    """Found probing (session 16): 200 connections that each asked for a pipeline's 3.5 MB tree and
    read nothing took the service from 104 MB to 512 MB, held for as long as the clients liked."""
    import httpx

    proc, tree_url, conn, _ = _three_big_answers_asked(tmp_path, "2")
    url = tree_url.split("/api/")[0]
    try:
        time.sleep(6)  # the client reads nothing for three times the timeout
        conn.settimeout(20)
        got, ended = 0, False
        try:
            while chunk := conn.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            ended = True
        except TimeoutError:
            pass  # the old server: the connection stayed, its answers all sent
        else:
            ended = True
        conn.close()
        assert ended and got < 3 * 3_000_000, (
            f"{got:,} bytes read, connection {'ended' if ended else 'still open'}"
        )
        assert httpx.get(url + "/api/v1/me", timeout=30).status_code == 200
    finally:
        _stop(proc)


def test_an_answer_read_slowly_but_steadily_arrives_whole(tmp_path: Path) -> None:
    """Review 16 (R1): the connection was dropped once its answer had stayed over the buffer's
    high-water mark for a whole --request-timeout, even while the client read it meanwhile. A client
    that reads at MIN_BODY_RATE or more gets the whole answer, however long that takes."""
    proc, _, conn, size = _three_big_answers_asked(tmp_path, "1")
    try:
        conn.settimeout(30)
        got, began = 0, time.monotonic()
        try:
            while chunk := conn.recv(32768):  # a few KB at a time (its small buffer): many seconds in all
                got += len(chunk)
                if got >= 3 * size:
                    break
                time.sleep(0.01)
        except ConnectionResetError:
            pass
        conn.close()
        assert got >= 3 * size, (
            f"{got:,} of {3 * size:,} bytes read in {time.monotonic() - began:.1f} s, then dropped"
        )
    finally:
        _stop(proc)


def test_an_answer_read_just_fast_enough_is_still_bounded_in_time(tmp_path: Path) -> None:
    """Review 17 (R3): a client reading just over MIN_BODY_RATE kept the rate rule happy and held a
    4 MB answer for about an hour, on each of its 64 connections. An answer may wait unread for
    --answer-timeout in all (here 4 s): this client, reading 20 kB a second (9 MB would take 7
    minutes), is dropped then, long before its answers are all read."""
    proc, _, conn, size = _three_big_answers_asked(tmp_path, "1", "--answer-timeout", "4")
    try:
        conn.settimeout(30)
        got, began, ended = 0, time.monotonic(), False
        try:
            while time.monotonic() - began < 60:
                chunk = conn.recv(2048)
                if not chunk:
                    ended = True
                    break
                got += len(chunk)
                time.sleep(0.1)
        except ConnectionResetError:
            ended = True
        took = time.monotonic() - began
        conn.close()
        assert ended and got < 3 * size, f"{got:,} of {3 * size:,} bytes read in {took:.1f} s, connection open"
        assert took < 40, f"dropped only after {took:.1f} s"
    finally:
        _stop(proc)
