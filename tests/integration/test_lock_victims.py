"""A real deadlock on PostgreSQL and MariaDB is recognised as a lock victim and run again.

Two transactions lock two rows in opposite orders; the server rolls one of them back. The victim's
error, as SQLAlchemy raises it, is a lock victim (culm._retry.is_lock_victim), and
``retrying`` runs the victim's transaction again until it commits.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from culm import _retry as retry

pytestmark = pytest.mark.timeout(120)


def test_a_deadlock_victim_is_recognised_and_run_again(server_database: str) -> None:
    engine = create_engine(server_database, pool_size=4)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE lockpair (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
            conn.execute(text("INSERT INTO lockpair (id, n) VALUES (1, 0), (2, 0)"))
        both_hold_one = threading.Barrier(2, timeout=30)
        errors: list[BaseException] = []
        attempts: dict[str, int] = {"a": 0, "b": 0}

        def transfer(name: str, first: int, second: int) -> None:
            attempts[name] += 1
            with engine.begin() as conn:
                conn.execute(text("UPDATE lockpair SET n = n + 1 WHERE id = :i"), {"i": first})
                if attempts[name] == 1:
                    both_hold_one.wait()  # only the first attempts meet: each holds the row the other wants
                conn.execute(text("UPDATE lockpair SET n = n + 1 WHERE id = :i"), {"i": second})

        def run(name: str, first: int, second: int) -> None:
            def once() -> None:
                try:
                    transfer(name, first, second)
                except Exception as exc:
                    errors.append(exc)
                    raise

            try:
                retry.retrying(once, f"transfer {name}")
            except Exception:  # noqa: BLE001 - recorded in errors; the assertions below say what went wrong
                pass

        threads = [threading.Thread(target=run, args=args) for args in (("a", 1, 2), ("b", 2, 1))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(errors) == 1, f"exactly one transaction is the victim: {errors!r}"
        assert retry.is_lock_victim(errors[0]), repr(errors[0])
        assert sorted(attempts.values()) == [1, 2]  # the victim ran again, once
        with engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT id, n FROM lockpair")).fetchall())  # type: ignore[arg-type]
        assert rows == {1: 2, 2: 2}, "both transfers committed in the end"
    finally:
        engine.dispose()


def test_other_errors_are_not_lock_victims(server_database: str) -> None:
    engine = create_engine(server_database)
    calls: list[Any] = []
    try:
        def broken() -> None:
            calls.append(1)
            with engine.connect() as conn:
                conn.execute(text("SELECT * FROM no_such_table"))

        with pytest.raises(Exception) as caught:
            retry.retrying(broken, "broken")
        assert not retry.is_lock_victim(caught.value)
        assert len(calls) == 1, "an error that is not a lock victim is not retried"
    finally:
        engine.dispose()
