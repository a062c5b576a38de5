"""How many connections one client may hold open on ``culm serve``.

Each connection holds a file descriptor for as long as the client keeps it, whether or not it ever
finishes a request: 1,100 connections from one client that sent part of a request's headers and
no more (found probing, session 15) used up the service's 1,024 descriptors, and every other
client's request timed out. The server's protocol counts connections per client address (an IPv6
client by its /64 network, as the other per-address limits do) and closes, as soon as it is
accepted, a connection past :data:`MAX_CONNECTIONS_PER_CLIENT`. A peer that is a trusted proxy is
not counted: every client behind it shares its address, and the proxy bounds its own.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from culm.web.auth import address_key

# A browser opens at most 6 connections to one server over HTTP/1.1; a script's pool, tens.
MAX_CONNECTIONS_PER_CLIENT = 64


def counted_protocol(trusted_proxies: str) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, refusing a client's connections past MAX_CONNECTIONS_PER_CLIENT.

    Args:
        trusted_proxies: the peers not counted, as ``culm serve --trusted-proxies`` takes them
            (addresses and networks separated by commas, ``*`` for any, ``''`` for none).
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

    class CountedProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _culm_client: str | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
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

        def connection_lost(self, exc: Exception | None) -> None:
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
