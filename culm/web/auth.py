"""Bearer-token authentication, roles, and slowing down clients that keep presenting bad tokens.

Roles nest: viewer reads; operator reads, submits and controls; admin is an operator who also manages
tokens. The console sends the token as an ``Authorization: Bearer`` header (never a cookie), so a
page on another site cannot make a browser act with it (no CSRF surface).
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from culm._retry import is_outage
from culm.web.addresses import address_key
from culm.web.tokens import TokenChecksBusy, TokenInfo, TokenStore

# Failures a client may make before it is slowed down, and how the delay grows (seconds).
FREE_FAILURES = 3
MAX_DELAY = 5.0
FAILURE_MEMORY = 600.0
MAX_CLIENTS = 100_000  # addresses whose failures are remembered

NO_AUTH = TokenInfo("no-auth", "admin", "culm serve --no-auth", 0.0, None, None)


class AuthError(Exception):
    """A request without a usable token (401) or with a role too low for it (403)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class FailureThrottle:
    """Counts failed tokens per client address; after a few, each further attempt waits longer."""

    def __init__(self) -> None:
        self._failures: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def delay(self, client: str) -> float:
        """How long the next attempt of ``client`` must wait before it is answered."""
        with self._lock:
            count, last = self._failures.get(client, (0, 0.0))
        if count < FREE_FAILURES or time.monotonic() - last > FAILURE_MEMORY:
            return 0.0
        return min(MAX_DELAY, 0.25 * 2 ** (count - FREE_FAILURES))

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            count, last = self._failures.pop(client, (0, 0.0))
            if now - last > FAILURE_MEMORY:
                count = 0
            self._failures[client] = (count + 1, now)  # last in the dict: the latest failure
            if len(self._failures) > MAX_CLIENTS:
                # The oldest failure goes, not every count: emptied, the table let whoever fills it
                # (an IPv6 client has 2**64 addresses) wipe the count of a client guessing tokens.
                del self._failures[next(iter(self._failures))]

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


class Authenticator:
    """Resolves a request's bearer token to a :class:`TokenInfo` (or the no-auth admin).

    Args:
        tokens: the token store.
        enabled: False for ``culm serve --no-auth`` (every request acts as admin).
        own_names: host names the service was asked to bind (``culm serve --host vm``): without
            tokens, requests addressed to them are served as those to ``localhost`` are.
    """

    def __init__(self, tokens: TokenStore, enabled: bool = True, own_names: Iterable[str] = ()) -> None:
        self.tokens = tokens
        self.enabled = enabled
        self.own_names = frozenset(name.lower() for name in own_names)
        self.throttle = FailureThrottle()

    async def identify(self, request: Request) -> TokenInfo:
        if not self.enabled:
            _only_from_this_machine(request, self.own_names)
            return NO_AUTH
        client = client_key(request)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "a bearer token is needed: send 'Authorization: Bearer <token>' "
                                 "(create one with `culm token create --role viewer|operator|admin`)")
        wait = self.throttle.delay(client)
        if wait:
            await asyncio.sleep(wait)
        try:
            info = await run_in_threadpool(self.tokens.check, token.strip())
        except TokenChecksBusy:
            # Not a failure: the token may well be good, and the slots are taken by whoever floods
            # (on another address, or the same one behind a proxy). Counted, three 429s put a good
            # client behind the throttle's delays. A flood is slowed by its own wrong secrets (401s).
            raise AuthError(429, "too many tokens are being checked at once: try again in a moment") from None
        except Exception as exc:
            unusable = _database_unusable(request, exc)
            if unusable is None:
                raise
            raise unusable from exc
        if info is None:
            self.throttle.failed(client)
            raise AuthError(401, "the token is unknown or revoked")
        self.throttle.succeeded(client)
        return info

    async def admit(self, request: Request, role: str) -> TokenInfo:
        """The request's token when its role includes ``role``.

        Raises:
            AuthError: 401 without a live token, 403 with a role below ``role``.
        """
        info = await self.identify(request)
        if not info.allows(role):
            raise AuthError(403, f"this needs the {role} role; the token has the {info.role} role")
        return info


def client_key(request: Request) -> str:
    """The client a per-address limit counts a request against (the bad-token throttle, live streams).

    An IPv6 address counts by its /64 network: that is what one subscriber is given, so one client
    holds 2**64 addresses, and counted one by one it slipped past every per-address limit by
    rotating them. An IPv4 address mapped into IPv6 counts as itself. What is no address (a name a
    trusted proxy's X-Forwarded-For gave) is cut to 64 characters.
    """
    return address_key(request.client.host if request.client else "unknown")


def _loopback_host(netloc: str, own_names: frozenset[str]) -> bool:
    """Whether ``host[:port]`` (a Host header, an Origin's address) names this machine: a loopback
    address, ``localhost`` or one of ``own_names``, the names the service was told to bind."""
    host = netloc.lower()
    if host.startswith("["):  # [::1]:8765
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:  # an IPv6 address without brackets has several
        host = host.partition(":")[0]
    if host == "localhost" or host in own_names:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another DNS name: it may point at 127.0.0.1 today and elsewhere tomorrow
        return False


def _only_from_this_machine(request: Request, own_names: frozenset[str]) -> None:
    """Without tokens (``culm serve --no-auth``), refuse what a web page elsewhere can send.

    A page on any site the operator visits may post a form to http://127.0.0.1:8765/... (a
    revoke needs no body), and a DNS name that points at 127.0.0.1 makes even its scripts
    same-origin. A browser names the page's origin in ``Origin`` and the name it used in
    ``Host``: both must be this machine (the console's own requests are). The name the operator
    bound (``culm serve --no-auth --host vm``, a name of a loopback address) counts as this
    machine: nobody else's DNS decides what it points at.

    Raises:
        AuthError: 403 naming the header.
    """
    host = request.headers.get("host", "")
    if host and not _loopback_host(host, own_names):
        raise AuthError(403, f"without tokens (--no-auth) only requests to a loopback name are served, not {host[:80]!r}")
    origin = request.headers.get("origin")
    if origin is not None and not _loopback_host(origin.partition("://")[2].rstrip("/"), own_names):
        raise AuthError(403, f"without tokens (--no-auth) only pages served from this machine may call the API, "
                             f"not {origin[:80]!r}")


def _require(role: str) -> Callable[[Request], Awaitable[TokenInfo]]:
    async def dependency(request: Request) -> TokenInfo:
        authenticator: Authenticator = request.app.state.auth
        return await authenticator.admit(request, role)

    dependency.__name__ = f"require_{role}"
    return dependency


#: FastAPI dependencies admitting each role (and the roles above it).
viewer = _require("viewer")
operator = _require("operator")
admin = _require("admin")


def _database_unusable(request: Request, exc: Exception) -> AuthError | None:
    """A 503 when checking a token met a database that is down or must be mended first (culm's
    tables missing), as the API's calls answer; None for any other failure. It was a 500."""
    explain = getattr(runtime_of(request), "database_problem", None)
    problem = explain(exc) if explain is not None else None
    if problem is not None:
        return AuthError(503, f"the database cannot be used: {problem}")
    if is_outage(exc):
        return AuthError(503, f"the database cannot be reached or used: {type(exc).__name__}: {exc}")
    return None


def runtime_of(request: Request) -> Any:
    """The runtime the service was started with."""
    return request.app.state.runtime
