"""A process of culm's frozen inside a transaction (stopped by SIGSTOP, a debugger, a paused VM)
holds that transaction's row locks for as long as it stays frozen: it is alive, so neither the
workers' burial nor a vanished-client check ends it. Every operator call and every runner that
needs those rows would wait for it. Each session culm opens asks the server to end it after
``CULM_IDLE_TRANSACTION_SECONDS`` idle inside a transaction (PostgreSQL's
idle_in_transaction_session_timeout, MariaDB's idle_transaction_timeout): the locks go, the call
goes through, and the frozen process wakes to a lost connection with nothing of its transaction kept.

Seen in CI (stop 35): a worker SIGSTOPped in the middle of a batch's transaction on MariaDB held the
pipeline's root row, and ``api.pause_pipeline`` waited past the test's 180 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from backends import create_database, drop_database
from engine_fixtures import wait_state
from storm_ops import version_of

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.errors import SettingsError
from culm.storage import migrate
from culm.storage.sql import SqlStore

pytestmark = [pytest.mark.timeout(120)]

IDLE = 2  # seconds: CULM_IDLE_TRANSACTION_SECONDS for these tests

# A process of culm's that locks the root's state row inside a write transaction, says so, then
# waits: the test freezes it there. Woken, it tries to commit and prints how that went.
HOLDER = """
import sys
from culm.storage.sql import SqlStore
store = SqlStore(sys.argv[1])
raw = store.engine.raw_connection()
cur = raw.cursor()
cur.execute("SELECT name FROM culm_state WHERE node_id = %s FOR UPDATE", (sys.argv[2],))
cur.execute("UPDATE culm_state SET started_time = -1 WHERE node_id = %s", (sys.argv[2],))
print("locked", flush=True)
sys.stdin.readline()
try:
    raw.commit()
    print("committed", flush=True)
except Exception as exc:
    print("lost:", type(exc).__name__, flush=True)
"""


@pytest.fixture(params=["postgres", "mariadb"])
def url(request, monkeypatch):
    monkeypatch.setenv("CULM_IDLE_TRANSACTION_SECONDS", str(IDLE))
    url = create_database(request.param)
    migrate.upgrade_database(url)
    yield url
    drop_database(url)


def _callback_tree() -> tuple[dict, str]:
    start, act = EmptyStartEvent(), ServiceActivity(component_code="t_callback")
    start.extend(act).extend(EmptyEndEvent())
    return build_tree(start), act.id


def test_a_call_is_not_held_for_ever_by_a_process_frozen_in_its_transaction(url: str) -> None:
    rt = culm.Runtime(url)
    holder = None
    try:
        import components  # noqa: F401 - registers t_callback

        tree, act = _callback_tree()
        root = tree["id"]
        assert api.run_pipeline(rt, tree).result
        wait_state(rt, act, "RUNNING", timeout=30)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, url, root], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env={**os.environ})
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        os.kill(holder.pid, signal.SIGSTOP)
        answer: dict[str, object] = {}

        def pause() -> None:
            answer["pause"] = api.pause_pipeline(rt, root)

        began = time.monotonic()
        caller = threading.Thread(target=pause, daemon=True)
        caller.start()
        caller.join(IDLE + 30)
        waited = time.monotonic() - began
        assert "pause" in answer, f"pause_pipeline still waits for the frozen session after {waited:.1f} s"
        assert answer["pause"].result, answer["pause"]  # type: ignore[attr-defined]
        wait_state(rt, root, "SUSPENDED", timeout=10)
        os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().startswith("lost:")  # its transaction was ended, not kept
        assert holder.wait(30) == 0
        assert _started_time(url, root) != -1  # the frozen transaction's write was rolled back
        assert api.resume_pipeline(rt, root).result
        assert api.callback(rt, act, version_of(rt, act), {}).result
        wait_state(rt, root, "FINISHED", timeout=30)
    finally:
        if holder is not None and holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.wait(10)
        rt.close()


def _started_time(url: str, node_id: str) -> float | None:
    store = SqlStore(url)
    try:
        with store.engine.connect() as conn:
            return conn.exec_driver_sql("SELECT started_time FROM culm_state WHERE node_id = %(n)s",
                                        {"n": node_id}).scalar()
    finally:
        store.dispose()


def test_a_bad_idle_transaction_setting_is_refused_naming_it(monkeypatch) -> None:
    monkeypatch.setenv("CULM_IDLE_TRANSACTION_SECONDS", "half a minute")
    with pytest.raises(SettingsError, match="CULM_IDLE_TRANSACTION_SECONDS .*'half a minute'"):
        SqlStore("postgresql+psycopg://postgres@127.0.0.1:5432/test")
