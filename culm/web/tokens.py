"""API tokens: created and revoked by an admin, kept as salted scrypt hashes.

A token reads ``culm_<id>_<secret>``. The id picks the row; the secret is checked against its
salted ``hashlib.scrypt`` hash with a constant-time comparison. scrypt comes with Python's standard
library (OpenSSL), so no extra dependency is needed, and it is memory-hard: a stolen table does not
give the tokens away cheaply even though secrets are random. Because hashing costs milliseconds, the
service remembers which presented tokens it already verified (by a SHA-256 of the token, in memory)
and only re-reads the row each request, so a revocation made by another process counts at once.

The rows live in the runtime's database (``Runtime.token_table()``, :mod:`culm.storage.tokens`);
this module decides what goes into them and what a presented token is worth.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

NAME_LENGTH = 255  # the width of culm_api_token.name

ROLES = ("viewer", "operator", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}
PREFIX = "culm_"
# scrypt cost: 16 MiB and ~30-60 ms per check on this project's machine; paid once per token and process.
_N, _R, _P = 2**14, 8, 1
# Secrets hashed at once in one process. A token's id is no secret (`culm token list` shows it, a
# viewer knows their own): 200 requests at once with a known id and wrong secrets each hashed,
# held every thread of the web server (a verified token's request took 18 s) and 780 MB. Past the
# bound a request is answered 429 without hashing; tokens verified before are not hashed again, and
# requests presenting the same text at once share one hash (TokenStore._matches).
MAX_CONCURRENT_CHECKS = 2


class TokenChecksBusy(Exception):
    """Every slot for hashing a presented secret is taken: try again in a moment."""
USE_RECORD_SECONDS = 60.0


class TokenError(ValueError):
    """A token command got an unusable argument (unknown role, unknown or revoked id)."""


@dataclass(frozen=True)
class TokenInfo:
    """What a token allows (never its secret)."""

    id: str
    role: str
    name: str
    created_time: float
    revoked_time: float | None
    last_used_time: float | None

    def allows(self, role: str) -> bool:
        """Whether this token's role includes ``role`` (admin > operator > viewer)."""
        return _RANK[self.role] >= _RANK[role]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "role": self.role, "name": self.name, "created_time": self.created_time,
                "revoked_time": self.revoked_time, "last_used_time": self.last_used_time,
                "revoked": self.revoked_time is not None}


def _hash(secret: str, salt: bytes) -> str:
    return hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32, maxmem=64 * 1024 * 1024).hex()


def _info(row: Any) -> TokenInfo:
    return TokenInfo(row.id, row.role, row.name, row.created_time, row.revoked_time, row.last_used_time)


class TokenTable(Protocol):
    """What tokens need of their table (``Runtime.token_table()`` gives one). Its rows have the
    fields of a :class:`TokenInfo` plus ``salt`` and ``secret_hash``."""

    def add(self, token_id: str, role: str, name: str, salt: str, secret_hash: str, created_time: float) -> None: ...

    def revoke(self, token_id: str, now: float) -> tuple[Any | None, bool]: ...

    def all(self) -> list[Any]: ...

    def get(self, token_id: str) -> Any | None: ...

    def note_use(self, token_id: str, now: float) -> None: ...


class TokenStore:
    """Tokens in the ``culm_api_token`` table of a runtime's database.

    Args:
        table: the token rows, ``runtime.token_table()``.
    """

    def __init__(self, table: TokenTable) -> None:
        self.table = table
        self._verified: dict[bytes, str] = {}
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()
        self._hashing = threading.BoundedSemaphore(MAX_CONCURRENT_CHECKS)
        self._pending: dict[bytes, Future[bool]] = {}  # texts being hashed now: their outcome

    def create(self, role: str, name: str = "") -> tuple[str, TokenInfo]:
        """Store a new token; returns its text (shown once, never stored) and its record.

        Raises:
            TokenError: ``role`` is not one of viewer, operator, admin, or ``name`` is too long to
                store (PostgreSQL and MySQL would refuse it, SQLite keep it).
        """
        if role not in _RANK:
            raise TokenError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if len(name) > NAME_LENGTH:
            raise TokenError(f"the name is {len(name)} characters long; at most {NAME_LENGTH} are stored")
        if not name.isprintable():
            # `culm token list` prints one line a token: a newline in a name (an admin's POST
            # /api/v1/tokens) forged a line listing a token that does not exist.
            bad = next(char for char in name if not char.isprintable())
            raise TokenError(f"the name holds the character {bad!r}, which cannot be printed (names take "
                             "printable characters only)")
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        now = time.time()
        self.table.add(token_id, role, name, salt.hex(), _hash(secret, salt), now)
        return f"{PREFIX}{token_id}_{secret}", TokenInfo(token_id, role, name, now, None, None)

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token for good.

        Raises:
            TokenError: no token has this id, or it is already revoked.
        """
        row, done = self.table.revoke(token_id, time.time())
        if row is None:
            raise TokenError(f"no token with id {token_id!r}")
        if not done:
            raise TokenError(f"token {token_id} is already revoked")
        return _info(row)

    def list(self) -> list[TokenInfo]:
        """Every token, revoked ones included, oldest first."""
        return [_info(r) for r in self.table.all()]

    def check(self, token: str) -> TokenInfo | None:
        """The live (not revoked) token that ``token`` is, or None.

        Raises:
            TokenChecksBusy: ``token`` was not verified before and MAX_CONCURRENT_CHECKS secrets are
                being hashed now.
        """
        digest = hashlib.sha256(token.encode()).digest()
        token_id = self._verified.get(digest)
        if token_id is not None:
            row = self.table.get(token_id)
            if row is None or row.revoked_time is not None:
                return None
            self._note_use(row.id)
            return _info(row)
        parts = token.split("_", 2) if token.startswith(PREFIX) else []
        if len(parts) != 3 or len(token) > 200:
            return None
        row = self.table.get(parts[1])
        if row is None or row.revoked_time is not None:
            return None
        if not self._matches(digest, parts[2], row):
            return None
        with self._lock:
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[digest] = row.id
        self._note_use(row.id)
        return _info(row)

    def _matches(self, digest: bytes, secret: str, row: Any) -> bool:
        """Whether ``secret`` is the token's: hashed once for every request presenting the same
        text at once (a console's first requests with a new token come together: they wait for
        one hash rather than each take a slot), at most MAX_CONCURRENT_CHECKS texts at a time."""
        with self._lock:
            pending = self._pending.get(digest)
            mine = pending is None
            if pending is None:
                pending = self._pending[digest] = Future()
        if not mine:
            return bool(pending.result())  # raises TokenChecksBusy as the hashing request did
        try:
            if not self._hashing.acquire(blocking=False):
                raise TokenChecksBusy(f"{MAX_CONCURRENT_CHECKS} token checks are under way")
            try:
                matches = hmac.compare_digest(_hash(secret, bytes.fromhex(row.salt)), row.secret_hash)
            finally:
                self._hashing.release()
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        else:
            pending.set_result(matches)
            return matches
        finally:
            with self._lock:
                del self._pending[digest]

    def _note_use(self, token_id: str) -> None:
        """Record when a token was used, at most once a minute per token and process (not a write
        per request)."""
        now = time.time()
        with self._lock:
            if now - self._used.get(token_id, 0.0) < USE_RECORD_SECONDS:
                return
            self._used[token_id] = now
        self.table.note_use(token_id, now)
