"""How the beat and relay loops of a ``culm worker`` log a failed pass: a culm table dropped under
a running worker is one line naming the table and ``culm db upgrade``, at most once a minute per
loop, not the driver's traceback at every beat; any other failure keeps its traceback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from culm.dispatch.liveness import _FailureLog
from culm.storage.sql import SqlStore


@pytest.fixture
def store(tmp_path: Path):
    made = SqlStore(f"sqlite:///{tmp_path / 'w.db'}")
    with made.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE culm_worker")
    yield made
    made.dispose()


def _fail_on_missing_table(store: SqlStore, log: _FailureLog, what: str) -> None:
    try:
        with store.engine.connect() as conn:
            conn.exec_driver_sql("SELECT owner FROM culm_worker")
    except Exception as exc:  # noqa: BLE001 - as the loops catch it
        log.failed(what, exc)
    else:
        raise AssertionError("culm_worker was not dropped")


def test_a_missing_table_is_one_line_naming_it_and_the_fix_once_a_minute(store: SqlStore, caplog) -> None:
    log = _FailureLog(store)
    with caplog.at_level(logging.WARNING, logger="culm.dispatch.liveness"):
        for _ in range(30):  # thirty beats
            _fail_on_missing_table(store, log, "beating the worker registry")
    records = [r for r in caplog.records if r.name == "culm.dispatch.liveness"]
    assert len(records) == 1, [r.getMessage() for r in records]
    (record,) = records
    assert record.levelno == logging.ERROR and record.exc_info is None
    message = record.getMessage()
    assert "\n" not in message, message
    assert message.startswith("beating the worker registry failed: the database at sqlite:///"), message
    assert "has no culm table culm_worker" in message and "culm db upgrade --db" in message, message


def test_another_failure_keeps_its_traceback_every_time(store: SqlStore, caplog) -> None:
    log = _FailureLog(store)
    with caplog.at_level(logging.WARNING, logger="culm.dispatch.liveness"):
        for _ in range(3):
            try:
                raise ConnectionError("broker went away")
            except ConnectionError as exc:
                log.failed("relay pass", exc)
    records = [r for r in caplog.records if r.name == "culm.dispatch.liveness"]
    assert [r.getMessage() for r in records] == ["relay pass failed"] * 3
    assert all(r.levelno == logging.WARNING and r.exc_info is not None for r in records)
