"""Every `culm` subcommand against the contract's exit codes: 2 bad usage or invalid input, 3 not
found, 4 cannot reach or use the database, 5 the engine refused the command; each time one
``error:`` line and no Python traceback. The table must name every subcommand `culm --help` lists."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import free_port

from culm.cli import build_parser

pytestmark = pytest.mark.timeout(300)

TREE = str(Path(__file__).resolve().parents[2] / "examples" / "tree.json")
PIPELINE, NODE = "pipeline_example_tree", "node_done"  # a FINISHED run of TREE
UNREACHABLE = "postgresql://127.0.0.1:1/x"  # nothing listens on port 1


@dataclass
class Row:
    """How to call one subcommand so that it meets each kind of failure (None: it cannot)."""

    usage: list[str]  # bad arguments: exit 2
    database: list[str] | None  # any call that opens the database: exit 4 when it is unreachable
    missing: list[str] | None = None  # an unknown id: exit 3
    refused: list[str] | None = None  # a command the engine refuses on a FINISHED run: exit 5


def _node(command: str, *extra: str, refused: bool = True) -> Row:
    return Row(usage=[command], database=[command, NODE, *extra], missing=[command, "ghost", *extra],
               refused=[command, NODE, *extra] if refused else None)


def _pipeline(command: str, *extra: str, refused: bool = True) -> Row:
    return Row(usage=[command], database=[command, PIPELINE, *extra], missing=[command, "ghost", *extra],
               refused=[command, PIPELINE, *extra] if refused else None)


WORKER = ["worker", "--broker", "redis://127.0.0.1:1/0", "--prefix", "culm_exit_codes"]
TABLE: dict[str, Row] = {
    "run": Row(usage=["run", TREE, "--timeout", "soon"], database=["run", TREE, "--new-ids"],
               missing=["run", "--attach", "ghost"], refused=["run", TREE]),  # a tree id runs once
    "validate": Row(usage=["validate"], database=None),
    "list": Row(usage=["list", "--limit", "many"], database=["list"]),
    "status": Row(usage=["status"], database=["status", PIPELINE], missing=["status", "ghost"]),
    "show": Row(usage=["show", ""], database=["show", PIPELINE], missing=["show", "ghost"]),
    "logs": Row(usage=["logs", PIPELINE], database=["logs", NODE], missing=["logs", "ghost"]),
    "history": Row(usage=["history", PIPELINE], database=["history", NODE], missing=["history", "ghost"]),
    "watch": Row(usage=["watch", NODE], database=["watch", PIPELINE], missing=["watch", "ghost"]),
    "pause": _pipeline("pause"),
    "resume": _pipeline("resume"),
    "revoke": _pipeline("revoke"),
    "retry": _node("retry"),
    "retry-subprocess": _node("retry-subprocess"),
    "skip": _node("skip"),
    "skip-exclusive-gateway": _node("skip-exclusive-gateway", "--flow", "flow_1"),
    "skip-conditional-parallel-gateway": _node("skip-conditional-parallel-gateway", "--flows", "flow_1",
                                               "--converge", "node_end"),
    "force-fail": _node("force-fail"),
    "callback": _node("callback", "--data", "{}"),
    "pause-node": _node("pause-node"),
    "resume-node": _node("resume-node"),
    "set-context": _pipeline("set-context", "who=x", refused=False),  # bamboo lets it change any run
    "set-outputs": _node("set-outputs", "x=1"),
    "loop-times": _node("loop-times", "3"),
    "worker": Row(usage=[*WORKER, "--concurrency", "-1"], database=WORKER),
    "workers": Row(usage=["workers", "--dead-after", "0"], database=["workers"]),
    "db upgrade": Row(usage=["db"], database=["db", "upgrade"]),
    "db recount": Row(usage=["db", "recount", "--json"], database=["db", "recount"]),
    "serve": Row(usage=["serve", "--port", "0"], database=["serve", "--port", str(free_port())]),
    "token create": Row(usage=["token", "create", "--role", "root"], database=["token", "create", "--role", "viewer"]),
    "token list": Row(usage=["token", "list", "--all"], database=["token", "list"]),
    "token revoke": Row(usage=["token", "revoke"], database=["token", "revoke", "ghost"],
                        missing=["token", "revoke", "ghost"], refused=["token", "revoke", "<revoked>"]),
}

# Worker options that once ended in a traceback (or started a worker anyway): each is one line, exit 2.
WORKER_MISTAKES = [
    ["--concurrency", "0"], ["--loglevel", "LOUD"], ["--queues", ","],
]


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
    """Every (sub)subcommand name, aliases included (``status`` and ``show``, ``db upgrade``)."""
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = subcommands(sub, f"{prefix}{name} ")
                found |= nested or {prefix + name}
    return found


def test_the_table_names_every_subcommand() -> None:
    assert subcommands(build_parser()) == set(TABLE)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with a FINISHED run of TREE and a revoked token."""
    path = tmp_path_factory.mktemp("exit_codes")
    assert culm(path, "run", TREE).returncode == 0
    created = culm(path, "token", "create", "--role", "viewer")
    token_id = created.stderr.split("token ")[1].split(";")[0]
    assert culm(path, "token", "revoke", token_id).returncode == 0
    (path / "revoked").write_text(token_id)
    return path


def culm(cwd: Path, *args: str, db: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CULM_")}
    env["CULM_DATABASE_URL"] = db or f"sqlite:///{cwd / 'codes.db'}"
    revoked = cwd / "revoked"
    argv = [revoked.read_text() if a == "<revoked>" else a for a in args] if revoked.exists() else list(args)
    return subprocess.run([sys.executable, "-m", "culm", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=90, stdin=subprocess.DEVNULL)


def one_error(out: subprocess.CompletedProcess, code: int) -> None:
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
    assert "error: " in last, out.stderr


def _rows(kind: str) -> list[tuple[str, list[str]]]:
    return [(name, getattr(row, kind)) for name, row in TABLE.items() if getattr(row, kind) is not None]


@pytest.mark.parametrize(("name", "args"), _rows("usage"), ids=[n for n, _ in _rows("usage")])
def test_bad_usage_exits_2(workdir: Path, name: str, args: list[str]) -> None:
    one_error(culm(workdir, *args), 2)


@pytest.mark.parametrize("mistake", WORKER_MISTAKES, ids=[" ".join(m) for m in WORKER_MISTAKES])
def test_worker_option_mistakes_exit_2(workdir: Path, mistake: list[str]) -> None:
    one_error(culm(workdir, *WORKER, *mistake), 2)


# Other mistakes that were taken as something else: a node for a pipeline (exit 3, "no pipeline"),
# a loop number that no loop has (exit 0, "no earlier runs in loop -5").
MISTAKES = [
    (["run", "--attach", NODE], f"{NODE} is a node of pipeline {PIPELINE}: attach the pipeline"),
    (["history", NODE, "--loop", "-5"], "expected a loop number, 1 or more"),
    (["history", NODE, "--loop", "0"], "expected a loop number, 1 or more"),
]


@pytest.mark.parametrize(("args", "message"), MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_a_mistaken_id_or_number_exits_2(workdir: Path, args: list[str], message: str) -> None:
    out = culm(workdir, *args)
    one_error(out, 2)
    assert message in out.stderr


# Empty values (and blank ones) once meant "the default" or "nothing" and exited 0, or reached the
# engine as a refusal (exit 5): `--db ''` used the default database, `--version ''` the current version.
EMPTY_VALUES = [
    (["logs", NODE, "--version", ""], "argument --version: expected a version, not ''"),
    (["logs", NODE, "--version", " "], "argument --version: expected a version, not ' '"),
    (["callback", NODE, "--data", "{}", "--version", ""], "argument --version: expected a version"),
    (["list", "--state", ""], "--state '': expected STATE or STATE,STATE,... with no empty state"),
    (["list", "--state", "RUNNING,"], "--state 'RUNNING,': expected STATE"),
    (["list", "--state", ","], "--state ',': expected STATE"),
    (["list", "--state", "NOPE"], "state 'NOPE' is not a state"),
    (["list", "--name", ""], "argument --name: expected a part of a pipeline name"),
    (["list", "--limit", "-1"], "--limit -1: expected a number of pipelines from 0 to 1000"),
    (["list", "--offset", "-1"], "--offset -1: expected 0 or more"),
    (["list", "--since", ""], "--since '': expected an age"),
    (["list", "--db", ""], "argument --db: expected a database URL"),
    (["status", PIPELINE, "--db", " "], "argument --db: expected a database URL"),
    (["run", TREE, "--new-ids", "--broker", ""], "argument --broker: expected a broker URL"),
    (["run", TREE, "--new-ids", "--prefix", ""], "argument --prefix: expected a queue name prefix"),
    (["validate", TREE, "--import", ""], "argument --import: expected a module name or .py file"),
    (["retry", NODE, "--broker", ""], "argument --broker: expected a broker URL"),
    (["retry", NODE, "--data", "@"], "--data '@': expected a file name after @"),
    (["retry", NODE, "--timeout", "-1"], "argument --timeout: expected a number of seconds, 0 or more"),
    (["skip-exclusive-gateway", NODE, "--flow", ""], "argument --flow: expected an id"),
    (["skip-conditional-parallel-gateway", NODE, "--flows", "", "--converge", "node_end"],
     "argument --flows: expected an id"),
    (["skip-conditional-parallel-gateway", NODE, "--flows", "flow_1", "--converge", ""],
     "argument --converge: expected an id"),
    (["loop-times", NODE, "-1"], "expected a whole number, 0 or more"),
    (["watch", PIPELINE, "--interval", "-1"], "expected a number of seconds, 0 or more"),
    (["token", "revoke", ""], "argument ID: expected an id"),
    (["serve", "--host", "", "--port", "1"], "argument --host: expected an address"),
    ([*WORKER, "--prefix", ""], "argument --prefix: expected a queue name prefix"),
    ([*WORKER, "--metrics-host", ""], "argument --metrics-host: expected an address"),
    (["worker", "--broker", ""], "argument --broker: expected a broker URL"),
]


@pytest.mark.parametrize(("args", "message"), EMPTY_VALUES, ids=[" ".join(a) or "''" for a, _ in EMPTY_VALUES])
def test_an_empty_or_negative_option_value_exits_2(workdir: Path, args: list[str], message: str) -> None:
    out = culm(workdir, *args)
    one_error(out, 2)
    assert message in out.stderr


@pytest.mark.parametrize("command", ["worker", "run", "retry", "serve"])
def test_a_broker_url_of_no_known_kind_exits_2(workdir: Path, command: str) -> None:
    args = {"worker": [], "run": [TREE, "--new-ids"], "retry": [NODE], "serve": ["--port", str(free_port())]}[command]
    out = culm(workdir, command, *args, "--broker", "nope://host")
    one_error(out, 2)
    assert "cannot use the broker URL 'nope://host': No such transport: nope" in out.stderr


@pytest.mark.parametrize(("name", "args"), _rows("missing"), ids=[n for n, _ in _rows("missing")])
def test_an_unknown_id_exits_3(workdir: Path, name: str, args: list[str]) -> None:
    out = culm(workdir, *args)
    one_error(out, 3)
    assert "ghost" in out.stderr


@pytest.mark.parametrize(("name", "args"), _rows("database"), ids=[n for n, _ in _rows("database")])
def test_an_unreachable_database_exits_4(workdir: Path, name: str, args: list[str]) -> None:
    out = culm(workdir, *args, db=UNREACHABLE)
    one_error(out, 4)
    assert "cannot use the database postgresql://127.0.0.1:1/x" in out.stderr


@pytest.mark.parametrize(("name", "args"), _rows("refused"), ids=[n for n, _ in _rows("refused")])
def test_a_refused_command_exits_5(workdir: Path, name: str, args: list[str]) -> None:
    out = culm(workdir, *args)
    one_error(out, 5)
    # Said once: not `error: retry node_done: cannot retry node node_done: ...`
    last = out.stderr.strip().splitlines()[-1]
    assert last.count(args[1]) <= 1 or name in ("run", "token revoke"), last


@pytest.mark.parametrize(("args", "line"), [
    (["retry", NODE], f"error: cannot retry node {NODE}: its state is FINISHED, expected FAILED"),
    (["force-fail", "node_start"], "error: node node_start is an EmptyStartEvent: only activities can be force-failed"),
    (["skip-exclusive-gateway", NODE, "--flow", "f"], f"error: node {NODE} is a ServiceActivity, not an ExclusiveGateway"),
    (["resume", PIPELINE], f"error: cannot resume pipeline {PIPELINE}: it is not paused (its state is FINISHED)"),
])
def test_a_refusal_is_the_engine_s_reason_said_once(workdir: Path, args: list[str], line: str) -> None:
    out = culm(workdir, *args)
    one_error(out, 5)
    assert out.stderr.strip().splitlines()[-1] == line, out.stderr
