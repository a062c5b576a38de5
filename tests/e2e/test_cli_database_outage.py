"""The CLI's exit codes when the database dies in the middle of a command, on a real PostgreSQL
and a real MariaDB.

The contract's exit 4 ("database unreachable or unusable") was tested only with a server that was
never there. Here a private server in a temporary directory, on a port of its own (the shared
servers are never touched): a PostgreSQL cluster (``initdb`` + ``pg_ctl``), stopped with ``pg_ctl
-m immediate`` (its processes killed, as a crash), or a ``mariadbd`` (``mariadb-install-db``),
killed with ``kill -9``, while each command runs: after it opened its runtime (connected, checked
the schema), before its call. Each command must then end at once with exit 4, one ``error:`` line
naming the database, and no traceback; never hang, never exit 0 or 5.

A second set drops culm's tables under a database at head (a partial restore, a ``DROP TABLE``
by hand): every command exits 4 with an error naming the missing table and the fix.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
TREE = str(REPO / "examples" / "tree.json")
PIPELINE, NODE = "pipeline_example_tree", "node_start"

# Runs a `culm` command whose Runtime, once open, touches ``$CULM_TEST_OPENED`` and waits for
# ``$CULM_TEST_GO`` before the command goes on: the test kills the database in between.
HELD = """
import os, sys, time
from pathlib import Path
import culm.runtime
opened, go = Path(os.environ["CULM_TEST_OPENED"]), Path(os.environ["CULM_TEST_GO"])
real_init = culm.runtime.Runtime.__init__
def held_init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    opened.touch()
    deadline = time.monotonic() + 120
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
culm.runtime.Runtime.__init__ = held_init
from culm.cli import main
sys.exit(main())
"""


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).exists():
            return str(base / name)
    return None


class Cluster:
    """A private PostgreSQL cluster in ``root``, run as the ``postgres`` user when we are root."""

    def __init__(self, root: Path) -> None:
        self.root, self.data, self.port = root, root / "data", free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(root, "postgres")

    def _run(self, *argv: str) -> None:
        subprocess.run([*self.as_user, *argv], check=True, capture_output=True, timeout=120, cwd=self.root)

    def init(self) -> None:
        self._run(str(_tool("initdb")), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=20 -c fsync=off"
        )
        self._run(
            str(_tool("pg_ctl")),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def crash(self) -> None:
        """Every server process killed at once (``immediate``: no checkpoint, as after a crash)."""
        self._run(str(_tool("pg_ctl")), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, str(_tool("pg_ctl")), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=120,
            cwd=self.root,
        )


class MariaServer:
    """A private ``mariadbd`` with its own data directory and port, run as the ``mysql`` user when
    we are root; its crash is ``kill -9`` of the server process."""

    def __init__(self, root: Path) -> None:
        self.root, self.data, self.port = root, root / "data", free_port()
        self.url = f"mysql://root@127.0.0.1:{self.port}/culm"
        self.user = ["--user=mysql"] if os.geteuid() == 0 else []
        if self.user:
            shutil.chown(root, "mysql")
        self.proc: subprocess.Popen | None = None

    def init(self) -> None:
        subprocess.run(
            [
                str(_maria_tool("mariadb-install-db")),
                "--no-defaults",
                *self.user,
                f"--datadir={self.data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=180,
            cwd=self.root,
        )
        self.start()
        self._sql("CREATE DATABASE culm")
        self.stop()

    def _sql(self, statement: str) -> None:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", connect_timeout=5)
        try:
            conn.cursor().execute(statement)
        finally:
            conn.close()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                str(_maria_tool("mariadbd")),
                "--no-defaults",
                *self.user,
                f"--datadir={self.data}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.root / 'sock'}",
                f"--pid-file={self.root / 'pid'}",
                f"--log-error={self.root / 'log.err'}",  # (a name without .err gets it added)
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                # Every commit durable: the fixture's setup (culm db upgrade, a run) ends in kill -9, and
                # with the log flushed once a second a loaded machine lost the upgrade's last
                # commit (the tests then met "schema revision 0010, culm needs 0011").
                "--innodb-flush-log-at-trx-commit=1",
                "--max-connections=40",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.root,
        )

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (self.root / "log.err").read_text()
            try:
                self._sql("SELECT 1")
            except Exception:
                return False
            return True

        _poll(up, 120, f"the private mariadbd on port {self.port}")

    def crash(self) -> None:
        """The server process killed at once (InnoDB recovers at the next start)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(60)

    stop = crash


def _maria_tool(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name,) if p.exists()), None)


def _private_postgres() -> Cluster:
    if _tool("initdb") is None or _tool("pg_ctl") is None:
        pytest.skip("no initdb/pg_ctl to start a private PostgreSQL cluster")
    try:
        import pwd

        if os.geteuid() == 0:
            pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and no postgres user to run a private cluster as")
    # Not under pytest's own temporary directory: it is private to us, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="culm_private_pg_"))
    root.chmod(0o755)
    return Cluster(root)


def _private_mariadb() -> MariaServer:
    if _maria_tool("mariadb-install-db") is None or _maria_tool("mariadbd") is None:
        pytest.skip("no mariadb-install-db/mariadbd to start a private MariaDB")
    try:
        import pwd

        if os.geteuid() == 0:
            pwd.getpwnam("mysql")
    except KeyError:
        pytest.skip("running as root and no mysql user to run a private MariaDB as")
    root = Path(tempfile.mkdtemp(prefix="culm_private_maria_"))
    root.chmod(0o755)
    return MariaServer(root)


@pytest.fixture(scope="module", params=["postgres", "mariadb"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster | MariaServer]:
    found = _private_postgres() if request.param == "postgres" else _private_mariadb()
    root = found.root
    try:
        found.init()
        found.start()
        assert culm(root, "db", "upgrade", db=found.url).returncode == 0
        # A run that stays RUNNING: submitted by a runtime without workers, so no step is taken.
        script = (
            "import culm, json, sys; from culm import api; rt = culm.Runtime(sys.argv[1], workers=0); "
            f"r = api.run_pipeline(rt, json.load(open({TREE!r}))); rt.close(); sys.exit(0 if r.result else 1)"
        )
        assert subprocess.run([sys.executable, "-c", script, found.url], timeout=90).returncode == 0
        found.stop()
        yield found
    finally:
        found.stop()
        shutil.rmtree(root, ignore_errors=True)


def culm(cwd: Path, *args: str, db: str, held: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CULM_")}
    env["CULM_DATABASE_URL"] = db
    argv = [sys.executable, "-m", "culm", *args]
    if held is not None:
        env["CULM_TEST_OPENED"], env["CULM_TEST_GO"] = str(held / "opened"), str(held / "go")
        argv = [sys.executable, "-c", HELD, *args]
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL
    )


def one_error(out: subprocess.CompletedProcess, code: int) -> str:
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
    assert last.startswith("error: "), out.stderr
    return last


def _poll(check: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


# Each command reaches its call after its runtime is open; the server dies right then.
MID_CALL = {
    "list": ["list"],
    "status": ["status", PIPELINE],
    "watch": ["watch", PIPELINE, "--interval", "0.1"],
    "pause": ["pause", PIPELINE],
    "resume-node": ["resume-node", NODE],
    "pause-node": ["pause-node", NODE],
    "retry": ["retry", NODE],
    "skip": ["skip", NODE],
    "force-fail": ["force-fail", NODE],
    "callback": ["callback", NODE, "--data", "{}"],
    "set-context": ["set-context", PIPELINE, "who=x"],
    "loop-times": ["loop-times", NODE, "3"],
    "revoke": ["revoke", PIPELINE],
    "run": ["run", TREE, "--new-ids"],
}


@pytest.mark.parametrize("name", list(MID_CALL))
def test_a_database_killed_mid_command_exits_4(
    cluster: Cluster | MariaServer, tmp_path: Path, name: str
) -> None:
    cluster.start()
    try:
        result: list[subprocess.CompletedProcess] = []
        runner = threading.Thread(
            target=lambda: result.append(culm(tmp_path, *MID_CALL[name], db=cluster.url, held=tmp_path))
        )
        runner.start()
        _poll(lambda: (tmp_path / "opened").exists() or not runner.is_alive(), 90, f"`culm {name}` to open")
        assert (tmp_path / "opened").exists(), result
        cluster.crash()
        (tmp_path / "go").touch()
        runner.join(90)
        assert not runner.is_alive(), f"`culm {name}` still runs 90 s after its database died"
    finally:
        cluster.stop()
    last = one_error(result[0], 4)
    assert "database" in last and str(cluster.port) in last, last


def test_the_held_command_runs_normally_on_a_live_database(
    cluster: Cluster | MariaServer, tmp_path: Path
) -> None:
    # The hold itself changes nothing: with the server left up the same command succeeds.
    cluster.start()
    try:
        (tmp_path / "go").touch()
        out = culm(tmp_path, "status", PIPELINE, "--json", db=cluster.url, held=tmp_path)
    finally:
        cluster.stop()
    assert out.returncode == 0, out.stderr
    assert PIPELINE in json.dumps(json.loads(out.stdout))
