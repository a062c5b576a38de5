"""The ``culm_api_token`` table of ``culm serve``: the rows of its API tokens, nothing more.

What a token is (its text, its hash, its roles, when a check is made) is decided by
:mod:`culm.web.tokens`; this module only stores and reads the rows it is handed, so the service
reaches its table through the runtime (``Runtime.token_table()``) like everything else it stores,
and the command line's ``culm token`` commands use the same verbs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import insert, select, update

from culm.storage import schema as s


class TokenRow(NamedTuple):
    """One row of ``culm_api_token`` (the secret only as its salted hash)."""

    id: str
    role: str
    name: str
    salt: str
    secret_hash: str
    created_time: float
    revoked_time: float | None
    last_used_time: float | None


def _row(row: Any) -> TokenRow:
    return TokenRow(row.id, row.role, row.name, row.salt, row.secret_hash, row.created_time, row.revoked_time,
                    row.last_used_time)


class SqlTokenTable:
    """The token rows of a SQL store's database, one short transaction per verb.

    Args:
        engine: the SQLAlchemy engine of the store (``SqlStore.engine``).
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def add(self, token_id: str, role: str, name: str, salt: str, secret_hash: str, created_time: float) -> None:
        """Store a new token's row (neither revoked nor used yet)."""
        with self.engine.begin() as conn:
            conn.execute(insert(s.api_token).values(
                id=token_id, role=role, name=name, salt=salt, secret_hash=secret_hash, created_time=created_time,
                revoked_time=None, last_used_time=None))

    def revoke(self, token_id: str, now: float) -> tuple[TokenRow | None, bool]:
        """Mark a token revoked at ``now`` unless it already is; returns its row as it is after
        (None: no such token) and whether this call revoked it."""
        t = s.api_token
        with self.engine.begin() as conn:
            done = conn.execute(update(t).where(t.c.id == token_id, t.c.revoked_time.is_(None))
                                .values(revoked_time=now))
            row = conn.execute(select(t).where(t.c.id == token_id)).first()
        return (None if row is None else _row(row)), done.rowcount > 0

    def all(self) -> list[TokenRow]:
        """Every token's row, revoked ones included, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(s.api_token).order_by(s.api_token.c.created_time)).fetchall()
        return [_row(r) for r in rows]

    def get(self, token_id: str) -> TokenRow | None:
        """One token's row, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(s.api_token).where(s.api_token.c.id == token_id)).first()
        return None if row is None else _row(row)

    def note_use(self, token_id: str, now: float) -> None:
        """Record that a token was used at ``now``."""
        with self.engine.begin() as conn:
            conn.execute(update(s.api_token).where(s.api_token.c.id == token_id).values(last_used_time=now))
