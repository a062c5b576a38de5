"""How many connections one client may hold open on ``culm serve``.

Each connection holds a file descriptor for as long as the client keeps it, whether or not it ever
finishes a request: 1,100 connections from one client that sent part of a request's headers and
no more (found probing, session 15) used up the service's 1,024 descriptors, and every other
client's request timed out. The server's protocol counts connections per client address (an IPv6
client by its /64 network, as the other per-address limits do) and closes, as soon as it is
accepted, a connection past :data:`MAX_CONNECTIONS_PER_CLIENT`. A peer that is a trusted proxy is
not counted: every client behind it shares its address, and the proxy bounds its own.

That bound alone leaves the same attack open from many addresses (session 16: uvicorn sets no time
to receive a request, so one connection from each of 2,000 addresses, each having sent part of a
request's head, is held for ever). A request must also arrive in bounded time: its head within
:data:`REQUEST_SECONDS` of its first byte (or of the connection's opening), its body at no less than
:data:`MIN_BODY_RATE` bytes a second after that (Apache's mod_reqtimeout has the same two rules).
A request that does not is answered 408 and its connection closed. The time the application takes
is not counted: a connection whose whole request has arrived, or whose reading the server paused
(its application has not yet read what came), is never timed out.

The same holds for reading the answer: a client that asks for a large one (a tree of 4 MB) and
does not read it keeps it in the server's memory (200 such connections took a service from 104 MB
to 512 MB, held for as long as the clients kept them, session 16). A connection whose answer waits
unread (the transport's buffer over its high-water mark) for as long as the request timeout, and
whose client read less than :data:`MIN_BODY_RATE` bytes a second of it meanwhile, is dropped; a
client that reads a large answer slowly but steadily gets all of it, within :data:`ANSWER_SECONDS`.
That rate alone let a client reading just over 1,000 bytes a second hold a 4 MB answer for about an
hour, on each of its 64 connections (review 17, R3): an answer may also wait unread in the server's
memory (writing paused) for :data:`ANSWER_SECONDS` in all, after which its connection is dropped.
Only the time the client keeps the server waiting counts, and that count starts again after the
client kept up for :data:`CAUGHT_UP_SECONDS` (writing never paused meanwhile), so a live stream
(the console's ``/events``: one answer for a tab's whole life) read as it comes is never dropped
for the short backlogs of its bursts (review 18, F3), and a 4 MB answer needs a client reading
14 kB a second (a slow mobile link reads ten times that).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from culm.web.addresses import address_key

try:
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ  # on a socket: the bytes sent but not yet acknowledged, and unsent
except (ImportError, AttributeError):  # Windows
    _OUTQ = None

# A browser opens at most 6 connections to one server over HTTP/1.1; a script's pool, tens.
MAX_CONNECTIONS_PER_CLIENT = 64
# Seconds a request's head may take to arrive, from its first byte (`culm serve --request-timeout`).
REQUEST_SECONDS = 30.0
# Bytes a second a request's body must arrive at, on average, once REQUEST_SECONDS have passed: a
# 4 MiB body (the default --max-body) may take 30 s + 70 min; a client sending less pays bandwidth.
MIN_BODY_RATE = 1_000
# Seconds in all an answer may wait in the server's memory for its client to read it (writing
# paused), `culm serve --answer-timeout`: 4 MB read at 14 kB a second.
ANSWER_SECONDS = 300.0
# A client that kept up this long (writing not paused) has read what was behind: the answer's
# time unread counts from naught again at its next pause. A large answer read too slowly keeps
# writing paused all but moments, and so keeps its count.
CAUGHT_UP_SECONDS = 5.0

_log = logging.getLogger("uvicorn.error")  # what `culm serve` prints its own lines with
_warned = False  # the process said once that a peer it does not trust sent X-Forwarded-For


def _warn_untrusted_forwarding(peer: str) -> None:
    """Say once per process that ``peer`` sent X-Forwarded-For and is not trusted (session 17: a
    service behind a local proxy that was never named would count all clients as one, silently)."""
    global _warned
    if _warned:
        return
    _warned = True
    _log.warning("a request from %s carries X-Forwarded-For, but %s is not a trusted proxy: the header is "
                 "ignored and the per-client limits count %s itself (every client behind it as one). If it is "
                 "your proxy, name it with `culm serve --trusted-proxies` (or $CULM_TRUSTED_PROXIES); "
                 "this is said once", peer, peer, peer)


def counted_protocol(trusted_proxies: str, request_seconds: float = REQUEST_SECONDS,
                     answer_seconds: float = ANSWER_SECONDS) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, refusing a client's connections past MAX_CONNECTIONS_PER_CLIENT and
    closing (408) a connection whose request does not arrive in time.

    Args:
        trusted_proxies: the peers not counted, as ``culm serve --trusted-proxies`` takes them
            (addresses and networks separated by commas, ``*`` for any, ``''`` for none).
        request_seconds: the time a request's head may take (see REQUEST_SECONDS, MIN_BODY_RATE),
            and an answer may wait unread while its client reads under MIN_BODY_RATE.
        answer_seconds: the time in all an answer may wait unread (see ANSWER_SECONDS).
    """
    networks = [] if trusted_proxies.strip() == "*" else [
        ipaddress.ip_network(e.strip(), strict=False) for e in trusted_proxies.split(",") if e.strip()]
    trust_all = trusted_proxies.strip() == "*"
    held: dict[str, int] = {}  # the event loop's own: one thread counts

    def trusted(host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return trust_all or any(address in net for net in networks)

    def note_forwarding(scope: Any) -> None:
        """Warn of the first request that carries X-Forwarded-For from an untrusted peer (the
        scope's client is still the peer here: outside uvicorn's proxy-headers middleware)."""
        if not _warned and scope.get("type") in ("http", "websocket"):
            client = scope.get("client")
            peer = str(client[0]) if client else ""
            if peer and not trusted(peer) and any(k == b"x-forwarded-for" for k, _ in scope.get("headers", ())):
                _warn_untrusted_forwarding(peer)

    def _watching(app: Any) -> Any:
        """``app``, calling note_forwarding on each request first."""
        async def watched(scope: Any, receive: Any, send: Any) -> None:
            note_forwarding(scope)
            await app(scope, receive, send)
        return watched

    class CountedProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _culm_client: str | None = None
        _culm_timer: asyncio.TimerHandle | None = None
        _culm_started = 0.0  # when the request being received began (its first byte)
        _culm_bytes = 0  # bytes of it received so far
        _culm_stall: asyncio.TimerHandle | None = None  # while an answer waits unread
        _culm_unread = 0  # bytes of the answer the client had not read at the last look
        _culm_looked = 0.0  # when that look was
        _culm_answer: Any = None  # the request-response cycle whose answer the two below time
        _culm_waited = 0.0  # seconds that answer waited unread before the current pause
        _culm_paused_at: float | None = None  # when writing was paused, while it is
        _culm_resumed_at = 0.0  # when writing was last resumed

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if not trust_all and not _warned:
                self.app = _watching(self.app)  # type: ignore[has-type]

        def handle_websocket_upgrade(self, *args: Any) -> None:
            # The upgraded connection's protocol calls uvicorn's app, not this protocol's (watched)
            # one: a WebSocket upgrade is noted here, from the request that asked for it.
            if not trust_all:
                note_forwarding(getattr(self, "scope", {}))
            super().handle_websocket_upgrade(*args)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._culm_start_request()
            peer = transport.get_extra_info("peername")
            host = str(peer[0]) if peer else ""
            if not host or trusted(host):
                return
            key = address_key(host)
            if held.get(key, 0) >= MAX_CONNECTIONS_PER_CLIENT:
                transport.close()  # connection_lost follows: the protocol's own state is cleaned up
                return
            held[key] = held.get(key, 0) + 1
            self._culm_client = key

        def data_received(self, data: bytes) -> None:
            if self._culm_timer is None:
                self._culm_start_request()
            self._culm_bytes += len(data)
            super().data_received(data)
            if self._culm_request_in():
                self._culm_stop_timer()

        def _culm_start_request(self) -> None:
            self._culm_started, self._culm_bytes = time.monotonic(), 0
            self._culm_timer = self.loop.call_later(request_seconds, self._culm_check)

        def _culm_stop_timer(self) -> None:
            if self._culm_timer is not None:
                self._culm_timer.cancel()
                self._culm_timer = None

        def _culm_request_in(self) -> bool:
            """Whether the whole of the current request has arrived (the application has it)."""
            cycle = self.cycle
            return cycle is not None and not cycle.response_complete and not cycle.more_body

        def _culm_check(self) -> None:
            self._culm_timer = None
            if self.transport.is_closing() or self._culm_request_in():
                return
            now = time.monotonic()
            if self.flow.read_paused:  # the application has not read what came: not the client's doing
                self._culm_started, self._culm_bytes = now - request_seconds / 2, 0
                self._culm_timer = self.loop.call_later(request_seconds / 2, self._culm_check)
                return
            deadline = self._culm_started + request_seconds + self._culm_bytes / MIN_BODY_RATE
            if now < deadline:
                self._culm_timer = self.loop.call_later(deadline - now, self._culm_check)
                return
            self._culm_time_out()

        def _culm_time_out(self) -> None:
            if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
                body = (f"the request did not arrive in time: its head must arrive within {request_seconds:g} s "
                        f"of its first byte, its body at {MIN_BODY_RATE:,} bytes a second or more after that "
                        f"(got {self._culm_bytes:,} bytes in {time.monotonic() - self._culm_started:.0f} s)\n").encode()
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
                                     b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            self.transport.close()

        def pause_writing(self) -> None:
            super().pause_writing()
            now = time.monotonic()
            if self.cycle is not self._culm_answer or now - self._culm_resumed_at >= CAUGHT_UP_SECONDS:
                # a new answer, or the client kept up since the last pause: its own time
                self._culm_answer, self._culm_waited = self.cycle, 0.0
            self._culm_paused_at = now
            if self._culm_stall is None:
                self._culm_unread, self._culm_looked = self._culm_unread_bytes(), now
                self._culm_stall = self.loop.call_later(self._culm_next_look(now), self._culm_check_reading)

        def _culm_waited_in_all(self, now: float) -> float:
            paused = now - self._culm_paused_at if self._culm_paused_at is not None else 0.0
            return self._culm_waited + paused

        def _culm_next_look(self, now: float) -> float:
            return max(0.0, min(request_seconds, answer_seconds - self._culm_waited_in_all(now)))

        def _culm_unread_bytes(self) -> int:
            """Bytes written that the client has not read yet: the transport's buffer and, where the
            system tells (Linux), the socket's send queue. The kernel's queue takes megabytes and
            hands the transport's buffer on only in bursts, so the buffer alone can stand still for
            seconds while the client reads steadily."""
            unread = int(self.transport.get_write_buffer_size())
            sock = self.transport.get_extra_info("socket")
            if sock is not None and _OUTQ is not None:
                try:
                    unread += struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
                except OSError:
                    pass
            return unread

        def _culm_check_reading(self) -> None:
            """An answer has waited over the high-water mark since the last look: the client keeps
            the connection if it read at least MIN_BODY_RATE bytes a second meanwhile (while writing
            is paused the application adds nothing, so the buffer only shrinks as it reads), and
            the answer has not waited ``answer_seconds`` in all."""
            now, unread = time.monotonic(), self._culm_unread_bytes()
            slow = self._culm_unread - unread < MIN_BODY_RATE * (now - self._culm_looked)
            if slow or self._culm_waited_in_all(now) >= answer_seconds:
                self._culm_stall = None
                self._culm_drop()
                return
            self._culm_unread, self._culm_looked = unread, now
            self._culm_stall = self.loop.call_later(self._culm_next_look(now), self._culm_check_reading)

        def _culm_drop(self) -> None:
            """Close the connection, discarding its unread answer in the kernel too: a plain close
            leaves the socket's send queue (up to 4 MB) going out to the client after the server
            let go of it, for as long as the client reads (seen in the R3 test: the client read on
            at its pace)."""
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
                except OSError:
                    pass
            self.transport.abort()

        def resume_writing(self) -> None:
            self._culm_resumed_at = time.monotonic()
            if self._culm_paused_at is not None:
                self._culm_waited += self._culm_resumed_at - self._culm_paused_at
                self._culm_paused_at = None
            if self._culm_stall is not None:
                self._culm_stall.cancel()
                self._culm_stall = None
            super().resume_writing()

        def connection_lost(self, exc: Exception | None) -> None:
            self._culm_stop_timer()
            if self._culm_stall is not None:
                self._culm_stall.cancel()
                self._culm_stall = None
            key = self._culm_client
            if key is not None:
                self._culm_client = None
                left = held[key] - 1
                if left:
                    held[key] = left
                else:
                    del held[key]
            super().connection_lost(exc)

    return CountedProtocol
