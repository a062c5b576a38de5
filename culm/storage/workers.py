"""The worker registry (``culm_worker``): which worker processes are alive, and burying dead ones.

Every process that runs tasks for ``culm worker`` (each Celery pool process, and the main one)
registers one row under its engine's lease owner id and beats it (one UPDATE of that row) every
second or so. A relay (every worker runs one) takes a worker for dead when

* its beat is older than ``dead_after`` seconds, measured on the **database's** clock on both
  sides (the beat writes the server's time, the check compares with the server's time), so clocks
  that differ between hosts do not matter; or
* it ran on this machine, in this PID namespace, and its process is gone (no ``/proc/<pid>``,
  a zombie, or another process under the same pid): found at the relay's next look, without
  waiting for the beat to age. A killed Celery pool process and a killed ``culm worker`` on the
  same host are found this way.

Burying a worker is one transaction: delete its row (only if it is still as seen dead, so when many
relays see the same death, one wins and the others do nothing) and free the leases it held. The
relay then publishes those tasks. A worker that was merely slow (a long pause, a stalled
connection) finds its row gone at its next beat and registers again; its freed tasks may have been
claimed by another worker meanwhile, and a runner applies a result only while it holds the task, so
its late results are dropped, never applied twice (``culm.storage.sql``, ``task_with_process``).
Per-task leases stay as the fallback for a worker whose row is missing (it could not register).

An embedded runtime's runner on a server database (``culm.Runtime(url)`` without a broker, see
``culm.dispatch.liveness.EmbeddedPresence``) registers too, with no queue prefix
(``WorkerInfo.embedded``), so that the other runners know whether a live runner may be about to
claim a task. It is buried only once its process is known gone, never for its silence alone.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from culm._printable import engine_logger
from culm.core.records import WorkerInfo, worker_dead_after  # noqa: F401 - the storage face names it

if TYPE_CHECKING:
    from culm.storage.sql import SqlStore, SqlUnit

logger = engine_logger("culm.storage.workers")

# {now}: the database's clock as epoch seconds, the dialect's ``db_now`` (filled in once per registry).
_COLUMNS = "owner, host, pid, process_key, threads, prefix, started_time, beat_time"
_REGISTER = f"INSERT INTO culm_worker ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, {{now}}, {{now}})"
_BEAT = "UPDATE culm_worker SET beat_time = {now} WHERE owner = ?"
_UNREGISTER = "DELETE FROM culm_worker WHERE owner = ?"
_REGISTERED = "SELECT 1 FROM culm_worker WHERE owner = ?"
# Asked again once the rows to free are locked, as a locking read (the latest committed row, on
# MariaDB too): a claim the owner committed after registering again is then never freed.
_REGISTERED_NOW = "SELECT owner FROM culm_worker WHERE owner = ? FOR UPDATE"
_LIST = f"SELECT {_COLUMNS}, {{now}} - beat_time FROM culm_worker ORDER BY host, pid"
# Deleted only while still silent: a beat that came in meanwhile keeps the row (and the worker).
_BURY_SILENT = "DELETE FROM culm_worker WHERE owner = ? AND beat_time < {now} - ?"
# The leases of a buried owner: read plainly (no index on owner: every claim writes it), then freed
# by primary key in one order, skipping rows a live transaction holds (they keep their lease, which
# runs out as before).
_HELD_BY = "SELECT id FROM culm_task WHERE owner = ? ORDER BY id"
_LOCK_HELD = "SELECT id FROM culm_task WHERE id IN ({marks}) AND owner = ? ORDER BY id FOR UPDATE SKIP LOCKED"
_FREE = "UPDATE culm_task SET owner = NULL, claimed_until = NULL WHERE id IN ({marks}) AND owner = ?"


# -- process identity -----------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _machine() -> str:
    """This boot of this kernel and this PID namespace ('' where /proc does not tell): processes
    with the same value see each other's pids."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}" if boot else ""


def _stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks) of a process, None when there is none."""
    raw = _read(f"/proc/{pid}/stat")
    if not raw or ")" not in raw:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return (fields[0], fields[19]) if len(fields) > 19 else None


def process_key(pid: int | None = None) -> str:
    """``<boot id>/<pid namespace>|<pid>|<start time>`` of a process of this machine ('' off Linux)."""
    pid = os.getpid() if pid is None else pid
    machine, stat = _machine(), _stat(pid)
    return f"{machine}|{pid}|{stat[1]}" if machine and stat else ""


def process_gone(key: str) -> bool:
    """Whether the process ``key`` names ran where this one runs and has ended (False when that
    cannot be told here: another machine or namespace, or no /proc)."""
    machine, _, rest = key.partition("|")
    pid, _, started = rest.partition("|")
    if not machine or machine != _machine() or not pid.isdigit():
        return False
    stat = _stat(int(pid))
    if stat is None:  # no such process, or one /proc hides from this user (hidepid, ProtectProc)
        return not _exists(int(pid))
    return stat[0] in ("Z", "X") or stat[1] != started


def _exists(pid: int) -> bool:
    """Whether a process ``pid`` exists, asked of the kernel (a signal 0): another user's process,
    which /proc may hide, exists too. Whether it is still the one registered cannot be told then,
    so it counts as alive: its leases run out if it is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: another user's
    return True


# -- the registry ---------------------------------------------------------------------------------


class SqlWorkerRegistry:
    """The ``culm_worker`` rows of a store's database (see the module docstring); the
    :class:`culm.core.ports.WorkerRegistry` of the distributed runtime.

    Args:
        store: the worker's store.
    """

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        now = store.traits.db_now
        self._register, self._beat, self._list, self._bury_silent = (
            sql.format(now=now) for sql in (_REGISTER, _BEAT, _LIST, _BURY_SILENT))

    def register(self, owner: str, threads: int, prefix: str) -> None:
        """Add this process's row (beating from now on)."""
        with self.store.transaction() as unit:
            unit._x(_UNREGISTER, [owner])  # a row left by an earlier registration of the same owner
            unit._x(self._register,
                    [owner, socket.gethostname()[:255], os.getpid(), process_key(), int(threads), prefix[:255]])

    def beat(self, owner: str) -> bool:
        """Stamp the owner's row with the database's time; False when it has no row (never
        registered, or buried as dead: the caller registers again)."""
        with self.store.transaction() as unit:
            return int(unit._x(self._beat, [owner]).rowcount) == 1

    def unregister(self, owner: str) -> None:
        """Remove the owner's row (a clean shutdown, after its tasks were released)."""
        with self.store.transaction() as unit:
            unit._x(_UNREGISTER, [owner])

    def workers(self) -> list[WorkerInfo]:
        """Every registered worker, by host and pid."""
        with self.store.reading() as unit:
            rows = unit._all(self._list)
        return [WorkerInfo(str(r[0]), str(r[1]), int(r[2]), str(r[3] or ""), int(r[4]), str(r[5]), float(r[6]),
                           float(r[7]), float(r[8])) for r in rows]

    def dead(self, dead_after: float) -> list[tuple[WorkerInfo, bool]]:
        """The workers to bury: (worker, silent) for each whose beat is older than ``dead_after``
        (silent) or whose process, on this machine, is gone.

        An embedded runner (``WorkerInfo.embedded``) is buried only once its process is known gone:
        unlike a worker, it does not look, before it starts the calls it handed out, whether it
        was taken for dead meanwhile, so one only paused (a SIGSTOP, a suspended laptop) would run
        a call another runner took over. Silent, it keeps its leases until they run out."""
        found = []
        for w in self.workers():
            if w.silent_for > dead_after and not w.embedded:
                found.append((w, True))
            elif w.process_key and process_gone(w.process_key):
                found.append((w, False))
        return found

    def bury(self, owner: str, silent_after: float | None) -> list[str] | None:
        """Delete a dead worker's row and free its leases, in one transaction.

        ``silent_after``: delete the row only if its beat is still older than that (seconds), so a
        beat that came in meanwhile keeps it; None when its process is known to be gone.
        Returns the ids of the freed tasks, or None when the row was gone or alive (another relay
        buried it first, or it beat again): then nothing was changed.
        """
        with self.store.transaction() as unit:
            if silent_after is None:
                deleted = unit._x(_UNREGISTER, [owner]).rowcount
            else:
                deleted = unit._x(self._bury_silent, [owner, silent_after]).rowcount
            if int(deleted) != 1:
                return None
            return _free_leases(unit, owner)

    def free_leases(self, owner: str) -> list[str]:
        """Free the leases ``owner`` (buried) still holds. A process killed mid-transaction leaves
        that transaction on the server for a moment (until it reads the closed socket and rolls
        back, or, on MariaDB, runs a sent query ending with COMMIT to its end); the burial skips
        the rows it locks, and they keep the dead owner's lease until this runs again.

        Nothing is freed once ``owner`` has registered again (it was alive after all, and beats):
        its leases are its own again."""
        with self.store.transaction() as unit:
            if unit._one(_REGISTERED, [owner]) is not None:
                return []
            return _free_leases(unit, owner, unless_registered=True)


def _free_leases(unit: SqlUnit, owner: str, unless_registered: bool = False) -> list[str]:
    """Free the leases ``owner`` holds on rows no transaction locks; ``unless_registered``: none
    when ``owner`` has a registry row once they are locked (it registered again meanwhile: a task
    it claimed since is its own; SQLite's write transaction shuts that out already)."""
    from culm.storage.sql.statements import marks as _marks

    ids = [str(r[0]) for r in unit._all(_HELD_BY, [owner])]
    freed: list[str] = []
    for at in range(0, len(ids), 500):
        chunk = ids[at:at + 500]
        marks = _marks(len(chunk))
        if unit.lock_rows:  # else (SQLite) the write transaction holds the whole file already
            chunk = [str(r[0]) for r in unit._all(_LOCK_HELD.format(marks=marks), [*chunk, owner])]
            if not chunk:
                continue
            if unless_registered and unit._one(_REGISTERED_NOW, [owner]) is not None:
                return freed  # the caller's transaction ends here: a freed chunk before stays freed
            marks = _marks(len(chunk))
        unit._x(_FREE.format(marks=marks), [*chunk, owner])
        freed += chunk
    if freed:
        logger.warning("worker %s is dead: freed the leases of %d task(s)", owner, len(freed))
    return freed
