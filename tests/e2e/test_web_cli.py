"""``culm serve`` and ``culm token`` as real processes."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import wait_until
from web_support import divide_tree, free_port

pytestmark = pytest.mark.timeout(180)

HERE = Path(__file__).resolve().parent


def culm(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CULM_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}", "PYTHONPATH": str(HERE)}
    env.pop("CULM_IMPORTS", None)
    return subprocess.run([sys.executable, "-m", "culm.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_token_create_list_revoke(tmp_path: Path) -> None:
    made = culm(tmp_path, "token", "create", "--role", "operator", "--name", "ci bot")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    token_id = token.split("_")[1]
    assert token.startswith("culm_") and "shown only now" in made.stderr
    listed = culm(tmp_path, "token", "list")
    assert token_id in listed.stdout and "operator" in listed.stdout and "active" in listed.stdout
    assert token.split("_", 2)[2] not in listed.stdout  # never the secret
    assert culm(tmp_path, "token", "revoke", token).returncode == 0  # the whole text works too
    assert "revoked" in culm(tmp_path, "token", "list").stdout
    again = culm(tmp_path, "token", "revoke", token_id)
    assert again.returncode == 5 and "already revoked" in again.stderr
    unknown = culm(tmp_path, "token", "revoke", "0000")
    assert unknown.returncode == 3 and "no token" in unknown.stderr
    bad_role = culm(tmp_path, "token", "create", "--role", "root")
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr
    # SQLite kept it, PostgreSQL said "cannot use the database ... value too long"
    long_name = culm(tmp_path, "token", "create", "--role", "viewer", "--name", "n" * 256)
    assert long_name.returncode == 2 and "error: the name is 256 characters long; at most 255" in long_name.stderr


def test_no_auth_serves_only_loopback(tmp_path: Path) -> None:
    res = culm(tmp_path, "serve", "--no-auth", "--host", "0.0.0.0")
    assert res.returncode == 2
    assert "--no-auth serves only a loopback address" in res.stderr


def _loopback_alias() -> str | None:
    """This machine's host name when it names loopback addresses only (127.0.1.1 on Debian)."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)}
    except socket.gaierror:
        return None
    loopback = addresses and all(ipaddress.ip_address(a.partition("%")[0]).is_loopback for a in addresses)
    return name if loopback and name != "localhost" else None


def test_no_auth_serves_the_loopback_name_it_was_asked_to_bind(tmp_path: Path) -> None:
    """`culm serve --no-auth --host vm` (vm an alias of 127.0.0.1): requests addressed to vm are the
    operator's own; a DNS name elsewhere that points at 127.0.0.1 is still refused."""
    alias = _loopback_alias()
    if alias is None:
        pytest.skip("this machine's host name does not name a loopback address")
    proc, url = _serve(tmp_path, "--no-auth", "--host", alias)
    port = url.rpartition(":")[2]
    own = f"http://{alias}:{port}"
    try:
        res = httpx.get(own + "/api/v1/me", timeout=10)
        assert res.status_code == 200 and res.json()["role"] == "admin", res.text
        revoke = own + "/api/v1/pipelines/p1/revoke"
        assert httpx.post(revoke, headers={"Origin": own}, timeout=10).status_code == 404  # the console's own
        assert httpx.post(revoke, headers={"Host": f"{alias.upper()}:{port}"}, timeout=10).status_code == 404
        for headers in ({"Origin": "https://evil.example"}, {"Host": f"rebound.example:{port}"},
                        {"Host": f"{alias}.evil.example"}):
            res = httpx.post(revoke, headers=headers, timeout=10)
            assert res.status_code == 403 and "--no-auth" in res.json()["detail"], (headers, res.text)
    finally:
        out = _stop(proc)
    assert f"culm serve on http://{alias}:{port}/" in out and "no authentication (loopback only)" in out


def test_no_auth_on_ipv6_loopback_prints_a_url_that_works(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    proc, url = _serve(tmp_path, "--no-auth", "--host", "::1")
    try:
        assert httpx.get(url + "/api/v1/me", timeout=10).json()["role"] == "admin"
    finally:
        out = _stop(proc)
    assert f"culm serve on {url}/ for " in out, out  # http://[::1]:PORT/, not http://::1:PORT/


@pytest.mark.parametrize("args", [["serve"], ["token", "create", "--role", "admin"], ["token", "list"]])
def test_a_memory_database_is_one_line_and_exit_4(tmp_path: Path, args: list[str]) -> None:
    res = culm(tmp_path, *args, "--db", "memory://")
    assert res.returncode == 4, res.stdout + res.stderr
    assert res.stdout == "" and res.stderr == (
        "error: API tokens live in a database; Runtime('memory://', embedded) keeps its data in memory: tokens "
        "and the service need a database (sqlite:///culm.db, postgresql://user@host/db or mysql://user@host/db)\n")


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "99999"], "argument --port: expected a port number from 1 to 65535, not 99999"),
    (["--port", "http"], "argument --port: expected a port number, not 'http'"),
    (["--max-body", "-5"], "argument --max-body: expected a number of bytes above 0, not -5"),
    (["--no-auth", "--host", "192.0.2.7"], "--no-auth serves only a loopback address"),
    (["--trusted-proxies", "10.0.0.0/33"], "argument --trusted-proxies: '10.0.0.0/33' is no IP address or network"),
    (["--trusted-proxies", "proxy.local"], "argument --trusted-proxies: 'proxy.local' is no IP address or network"),
])
def test_bad_serve_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    res = culm(tmp_path, "serve", *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = culm(tmp_path, "serve", "--no-auth", "--port", str(port))
    assert res.returncode == 2, res.stderr
    assert f"error: cannot serve on 127.0.0.1:{port}: the address is already in use" in res.stderr
    assert "Traceback" not in res.stderr and "Errno" not in res.stderr
    assert not (tmp_path / "serve.db").exists()


def test_a_bad_import_is_one_line_and_exit_2(tmp_path: Path) -> None:
    res = culm(tmp_path, "serve", "--import", "no_such_module_here")
    assert res.returncode == 2
    assert "cannot import module 'no_such_module_here'" in res.stderr and "Traceback" not in res.stderr


def _serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """Start `culm serve` on a free port; its URL (at 127.0.0.1, or at the name given with --host)."""
    port = free_port()
    env = {**os.environ, "CULM_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}", "PYTHONPATH": str(HERE),
           "CULM_IMPORTS": "web_components"}
    proc = subprocess.Popen([sys.executable, "-m", "culm.cli", "serve", "--port", str(port), *args], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 60, 0.2, what="culm serve to answer")
    return proc, url


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return str(out)


def test_serve_runs_the_engine_on_the_embedded_default(tmp_path: Path) -> None:
    token = culm(tmp_path, "token", "create", "--role", "operator").stdout.strip()
    proc, url = _serve(tmp_path)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(url + "/api/v1/pipelines", timeout=10).status_code == 401
        tree = divide_tree(4)
        res = httpx.post(url + "/api/v1/pipelines", json={"tree": tree}, headers=headers, timeout=30)
        assert res.status_code == 201, res.text

        def state() -> Any:
            got = httpx.get(f"{url}/api/v1/pipelines/{tree['id']}", headers=headers, timeout=10).json()
            return got["state"] == "FINISHED"

        wait_until(state, 60, 0.2, what="the pipeline to finish in the serve process")
    finally:
        out = _stop(proc)
    assert "runs the engine" in out and "bearer tokens required" in out
    assert "has no token yet" not in out
    # Ctrl-C: exit 130 as every culm command (uvicorn.run swallowed it: exit 0).
    assert proc.returncode == 130 and out.rstrip().endswith("interrupted"), out


def test_serve_warns_when_the_database_has_no_live_token(tmp_path: Path) -> None:
    # A new user starts `culm serve` before creating a token (or on another database than the one
    # `culm token create` wrote to): every request was a 401, with nothing on the terminal to say why.
    proc, _url = _serve(tmp_path)
    out = _stop(proc)
    assert "warning: this database has no token yet, so every request will be refused (401)" in out, out
    assert "`culm token create --role admin`" in out


def test_serve_no_auth_on_loopback_needs_no_token(tmp_path: Path) -> None:
    proc, url = _serve(tmp_path, "--no-auth")
    try:
        res = httpx.get(url + "/api/v1/me", timeout=10)
        assert res.status_code == 200 and res.json()["role"] == "admin"
        # Any web page the operator visits could post a form here (a revoke needs no body), or reach
        # it through a DNS name pointing at 127.0.0.1: without tokens, only this machine's pages.
        revoke = url + "/api/v1/pipelines/p1/revoke"
        assert httpx.post(revoke, headers={"Origin": url}, timeout=10).status_code == 404  # the console's own
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Host": "evil.example:80"}):
            res = httpx.post(revoke, headers=headers, timeout=10)
            assert res.status_code == 403 and "--no-auth" in res.json()["detail"], (headers, res.text)
        assert httpx.get(url + "/api/v1/me", headers={"Host": "rebound.example"}, timeout=10).status_code == 403
    finally:
        out = _stop(proc)
    assert "no authentication (loopback only)" in out


def test_serve_keeps_an_idle_connection_longer_than_clients_do(tmp_path: Path) -> None:
    """A storm of REST calls (tests/integration/storm_driver.py) got "Server disconnected without
    sending a response": uvicorn closed connections idle for 5 s, httpx reuses them for 5 s, and a
    request sent on one as the server closed it was lost. The server now keeps them 75 s, so a
    client's pool lets them go first. A connection idle for 6 s still answers."""
    proc, url = _serve(tmp_path, "--no-auth")
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            request = f"GET /api/v1/me HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
            conn.sendall(request)
            assert _response(conn).startswith(b"HTTP/1.1 200")
            idle_until = time.monotonic() + 6  # the connection idles past uvicorn's default of 5 s
            while time.monotonic() < idle_until:
                time.sleep(0.1)
            conn.setblocking(False)
            try:
                closed = conn.recv(1, socket.MSG_PEEK) == b""  # b"": the server closed it
            except BlockingIOError:
                closed = False  # open, nothing to read
            assert not closed, "the server closed a connection idle for 6 s"
            conn.setblocking(True)
            conn.sendall(request)
            assert _response(conn).startswith(b"HTTP/1.1 200")
    finally:
        _stop(proc)


def _response(conn: socket.socket) -> bytes:
    """One whole HTTP response (its headers and Content-Length bytes of body): the server may send
    them in separate segments, and a body left unread would be taken for the next response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"the server closed the connection mid-response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, f"the server closed the connection mid-body: {data!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize(("trusted", "forged_are_apart"),
                         [(None, False), ("", False), ("10.0.0.0/8,192.0.2.1", False), ("127.0.0.1", True)])
def test_trusted_proxies_decide_which_address_the_per_client_limits_count(
        tmp_path: Path, trusted: str | None, forged_are_apart: bool) -> None:
    """A live stream limit counts a client's address: from a trusted proxy the one its
    X-Forwarded-For names; from any other peer the peer's own. No proxy is trusted unless named
    (found probing, session 17: trusting this machine by default, as uvicorn has it, let any local
    process, or a tunnel ending on this machine, name any address it liked to the limits)."""
    from culm.web import live

    token = culm(tmp_path, "token", "create", "--role", "viewer").stdout.strip()
    proc, url = _serve(tmp_path, *([] if trusted is None else ["--trusted-proxies", trusted]))
    try:
        port = int(url.rsplit(":", 1)[1])
        held = []
        for n in range(live.MAX_STREAMS_PER_CLIENT + 1):
            conn = socket.create_connection(("127.0.0.1", port), timeout=30)
            held.append(conn)
            conn.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n"
                         f"X-Forwarded-For: 198.51.100.{n}\r\n\r\n".encode())
            first = conn.recv(4096)
        last_status = first.split(b"\r\n", 1)[0]
        assert last_status == (b"HTTP/1.1 200 OK" if forged_are_apart else b"HTTP/1.1 429 Too Many Requests"), first
        for conn in held:
            conn.close()
    finally:
        out = _stop(proc)
    # A peer that sends the header and is not trusted is named once (session 17: a service behind a
    # local proxy never named counted all its clients as one, without a word).
    warnings = [line for line in out.splitlines() if "X-Forwarded-For" in line]
    if forged_are_apart:
        assert warnings == [], out
    else:
        assert len(warnings) == 1, out
        assert warnings[0].startswith("WARNING:") and "from 127.0.0.1 " in warnings[0], warnings
        assert "--trusted-proxies" in warnings[0], warnings


def test_a_websocket_upgrade_from_an_untrusted_peer_naming_a_client_is_warned_of_too(tmp_path: Path) -> None:
    """Review 17: a plain request carrying X-Forwarded-For from a peer not trusted was warned of, a
    WebSocket upgrade carrying it was not (uvicorn hands the upgraded connection to another protocol,
    which calls the application without culm's watch). Both are now warned of, once."""
    proc, url = _serve(tmp_path, "--no-auth", "--trusted-proxies", "")
    try:
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30) as conn:
            conn.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                         b"X-Forwarded-For: 198.51.100.7\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 ")
    finally:
        out = _stop(proc)
    warnings = [line for line in out.splitlines() if "X-Forwarded-For" in line]
    assert len(warnings) == 1 and "from 127.0.0.1 " in warnings[0] and "--trusted-proxies" in warnings[0], out


def test_one_client_holding_connections_open_cannot_take_the_service_down(tmp_path: Path) -> None:
    """Found probing (session 15): 1,100 connections from one client, each sending part of a request's
    headers and no more, used up the service's 1,024 file descriptors: every other request timed
    out. Now a client past MAX_CONNECTIONS_PER_CLIENT has its further connections closed at once."""
    from culm.web.connections import MAX_CONNECTIONS_PER_CLIENT

    proc, url = _serve(tmp_path, "--no-auth", "--trusted-proxies", "")
    port = int(url.rsplit(":", 1)[1])
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS_PER_CLIENT + 16):
            conn = socket.create_connection(("127.0.0.1", port), timeout=30)
            conn.sendall(b"GET /api/v1/me HTTP/1.1\r\nHost: localhost\r\n")  # the headers never end
            held.append(conn)

        def closed_by_the_server() -> int:
            count = 0
            for conn in held:
                conn.setblocking(False)
                try:
                    count += conn.recv(1) == b""
                except BlockingIOError:
                    pass  # still open, waiting for the rest of its headers
                except ConnectionResetError:
                    count += 1
            return count

        wait_until(lambda: closed_by_the_server() == 16, 30, 0.2, what="the 16 connections past the bound to close")
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30)
        assert other.get(url + "/api/v1/me").status_code == 200  # another client is served
        for conn in held:
            conn.close()
        wait_until(lambda: httpx.get(url + "/api/v1/me", timeout=10).status_code == 200, 30, 0.2,
                   what="the client's connections to be given back")
    finally:
        for conn in held:
            conn.close()
        _stop(proc)
