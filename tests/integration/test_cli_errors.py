"""Every user mistake the CLI can meet gives one ``error:`` line, the documented exit code and no
traceback; a read command never creates a database file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from backends import PG_ADMIN, REPO
from support import wait_until

from culm import Runtime as culm_runtime
from culm import api

pytestmark = pytest.mark.timeout(120)

EXAMPLES = REPO / "examples"


def culm(cwd: Path, *args: str, db: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, CULM_DATABASE_URL=db or f"sqlite:///{cwd / 'err.db'}")
    env.pop("CULM_IMPORTS", None)
    env.pop("CULM_BROKER_URL", None)
    out = subprocess.run([sys.executable, "-m", "culm", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=100, stdin=subprocess.DEVNULL)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def one_error(out: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), out.stderr
    for fragment in fragments:
        assert fragment in out.stderr, (fragment, out.stderr)


@pytest.mark.parametrize("args", [["status", "p1"], ["logs", "n1"], ["history", "n1"], ["watch", "p1"],
                                  ["retry", "n1"], ["run", "--attach", "p1"]])
def test_a_read_or_control_command_never_creates_a_database(tmp_path: Path, args: list[str]) -> None:
    one_error(culm(tmp_path, *args), 3, "no database at", "err.db")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("options", [[], ["--json"], ["--state", "RUNNING,FAILED", "--since", "2h"]])
def test_list_on_a_missing_file_lists_nothing(tmp_path: Path, options: list[str]) -> None:
    """No file, no pipeline: `culm list` answers as on a new database (exit 0, nothing listed) with a
    note saying there is no database there, and creates none. It exited 3 ("not found"), which the
    contract keeps for an id that is not there."""
    out = culm(tmp_path, "list", *options)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stderr.startswith(f"note: no database at {tmp_path / 'err.db'}: nothing has run there yet"), out.stderr
    if "--json" in options:
        assert json.loads(out.stdout) == {"total": 0, "counts": {}, "items": [], "limit": 50, "offset": 0}
    else:
        assert "0 pipeline(s), showing none" in out.stdout
    assert not list(tmp_path.iterdir())
    one_error(culm(tmp_path, "list", "--state", "BOGUS"), 2, "'BOGUS' is not a state")  # checked as anywhere
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("db", "fragments"), [
    ("foo://bar", ("cannot use the database URL 'foo://bar'", "sqlite:///culm.db")),
    ("sqlite:////no/such/dir/x.db", ("cannot create the database /no/such/dir/x.db", "does not exist")),
    ("mysql+pymysql://root@127.0.0.1:1/x", ("cannot use the database", "Connection refused")),
])
def test_unusable_databases(tmp_path: Path, db: str, fragments: tuple[str, ...]) -> None:
    one_error(culm(tmp_path, "run", str(EXAMPLES / "tree.json"), db=db), 4, *fragments)


def test_a_server_database_that_does_not_exist(tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(PG_ADMIN).set(database="culm_no_such_database").render_as_string(hide_password=False)
    one_error(culm(tmp_path, "list", db=url), 4, "culm_no_such_database", "does not exist")


def test_a_schema_not_upgraded_names_the_command(tmp_path: Path, server_database: str) -> None:
    one_error(culm(tmp_path, "list", db=server_database), 4, "culm db upgrade --db")
    one_error(culm(tmp_path, "run", str(EXAMPLES / "tree.json"), db=server_database), 4, "culm db upgrade")


def test_a_read_only_database_file(tmp_path: Path) -> None:
    assert culm(tmp_path, "run", str(EXAMPLES / "tree.json")).returncode == 0
    db = tmp_path / "err.db"
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(db)]).returncode != 0:
        pytest.skip("cannot make a file read-only for root here")
    try:
        one_error(culm(tmp_path, "run", "--new-ids", str(EXAMPLES / "tree.json")), 4, "err.db", "read-only")
        assert culm(tmp_path, "status", "pipeline_example_tree").returncode == 0  # reading still works
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)


@pytest.mark.parametrize(("args", "code", "fragments"), [
    (["list", "--state", "DONE"], 2, ("state 'DONE' is not a state",)),
    (["list", "--since", "yesterday"], 2, ("--since 'yesterday'", "30m, 2h or 7d")),
    (["list", "--limit", "5000"], 2, ("--limit 5000", "from 0 to 1000")),
    (["retry", "node_done", "--data", "{oops"], 2, ("--data: invalid JSON",)),
    (["callback", "node_done", "--data", "[1]"], 2, ("--data must be a JSON object",)),
    (["set-context", "pipeline_example_tree", "who"], 2, ("expected KEY=VALUE",)),
    (["set-context", "pipeline_example_tree", "ghost=1"], 5, ("it has ended (state FINISHED)",)),
    (["retry", "node_done"], 5, ("FINISHED", "expected FAILED")),
    (["status", "ghost"], 3, ("no pipeline or node with id ghost",)),
    (["watch", "node_done"], 2, ("is a node of pipeline pipeline_example_tree",)),
    (["retry", "pipeline_example_tree"], 2, ("is a pipeline: `culm retry` takes one of its nodes",
                                            "`culm status pipeline_example_tree` lists them")),
    (["force-fail", "pipeline_example_tree", "--no-follow"], 2, ("is a pipeline: `culm force-fail`",)),
])
def test_bad_input_on_a_database_with_a_finished_run(tmp_path: Path, args: list[str], code: int,
                                                     fragments: tuple[str, ...]) -> None:
    assert culm(tmp_path, "run", str(EXAMPLES / "tree.json")).returncode == 0
    one_error(culm(tmp_path, *args), code, *fragments)


def test_validate_names_nodes_flags_and_reports_one_typo_once(tmp_path: Path) -> None:
    tree = json.loads((EXAMPLES / "tree.json").read_text())
    tree["flows"]["flow_3"]["target"] = "node_edn"
    (tmp_path / "typo.json").write_text(json.dumps(tree))
    out = culm(tmp_path, "validate", "typo.json")
    assert out.returncode == 2
    assert out.stdout.splitlines() == [
        "flow_3: flow refers to 'node_edn', which is not a node of pipeline pipeline_example_tree"]

    tree = json.loads((EXAMPLES / "tree.json").read_text())
    tree["activities"]["node_done"]["component"]["code"] = "no_such_code"
    (tmp_path / "code.json").write_text(json.dumps(tree))
    out = culm(tmp_path, "validate", "code.json")
    assert out.returncode == 2
    assert out.stdout.splitlines() == ["done (node_done): component 'no_such_code' is not registered"]
    refused = culm(tmp_path, "run", "code.json")
    assert refused.returncode == 2
    assert "done (node_done): component 'no_such_code' is not registered" in refused.stderr
    assert "--import MODULE" in refused.stderr

    from culm.builder import EmptyEndEvent, EmptyStartEvent, ExclusiveGateway, ServiceActivity, build_tree

    start, body, end = EmptyStartEvent(), ServiceActivity(component_code="example_component", name="body"), \
        EmptyEndEvent()
    gate = ExclusiveGateway(conditions={0: "1 == 1", 1: "1 == 0"})
    start.extend(body).extend(gate).connect(body, end)
    (tmp_path / "cycle.json").write_text(json.dumps(build_tree(start)))
    out = culm(tmp_path, "validate", "cycle.json")
    assert out.returncode == 2
    assert out.stdout.splitlines() == [f"body ({body.id}): node is on a cycle; pass --cycle-tolerate to allow loops"]
    assert culm(tmp_path, "validate", "cycle.json", "--cycle-tolerate").returncode == 0


def test_ctrl_c_then_attach_or_call_back_without_the_components_module(tmp_path: Path) -> None:
    # A new user's session: Ctrl-C on `culm run MODULE.py` while a node waits for its callback,
    # then the printed command to go on. That command named no module, so the attached run (and a
    # callback from another shell) ran the node's schedule without its component: the node FAILED
    # with "no component 'example_approval' ... is registered". Now the hint carries --import, and
    # a command that would run the pipeline's nodes without their components is refused up front.

    example = str(EXAMPLES / "callback_component.py")
    env = dict(os.environ, CULM_DATABASE_URL=f"sqlite:///{tmp_path / 'err.db'}")
    env.pop("CULM_IMPORTS", None)
    env.pop("CULM_BROKER_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "culm", "run", example], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        def waiting() -> bool:
            lines.append(proc.stdout.readline())  # type: ignore[union-attr]
            return "WAITING" in lines[-1] or proc.poll() is not None
        wait_until(waiting, 90, 0, what="the WAITING line")
        proc.send_signal(signal.SIGINT)
        _, err_text = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "Traceback" not in err_text, err_text
    root = lines[0].split("pipeline ")[1].split()[0]
    node = lines[-1].split("`culm callback ")[1].split()[0]
    assert f"continue it with `culm run --attach {root} --import {example}`" in err_text

    one_error(culm(tmp_path, "run", "--attach", root), 2, f"pipeline {root} uses component(s) 'example_approval'",
              "--import MODULE")
    one_error(culm(tmp_path, "callback", node, "--data", '{"approve": true}'), 2, "'example_approval'", "--no-follow")
    status = json.loads(culm(tmp_path, "status", root, "--json").stdout)["tree"]
    assert status["state"] == "RUNNING" and status["children"][node]["wait_reason"]["kind"] == "callback"

    done = culm(tmp_path, "callback", node, "--data", '{"approve": true, "approver": "me"}', "--import", example)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"pipeline {root} FINISHED" in done.stdout


def test_a_path_given_as_the_database_url_names_the_url_to_write(tmp_path: Path) -> None:
    one_error(culm(tmp_path, "list", "--db", "culm.db"), 4, "'culm.db': it is a path, not a URL",
              "write sqlite:///culm.db")
    one_error(culm(tmp_path, "list", db=str(tmp_path / "x.db")), 4, f"write sqlite:///{tmp_path / 'x.db'}")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args", [["status", "pipeline_example_tree"], ["status", "pipeline_example_tree", "--outputs"],
                                  ["list"], ["history", "node_done"]])
def test_a_reader_that_leaves_early_is_no_failure(tmp_path: Path, args: list[str]) -> None:
    # `culm status ID | head -1`: rich exited 1 on the closed pipe, and 1 says "the pipeline failed".
    assert culm(tmp_path, "run", str(EXAMPLES / "tree.json")).returncode == 0
    env = dict(os.environ, CULM_DATABASE_URL=f"sqlite:///{tmp_path / 'err.db'}")
    proc = subprocess.Popen([sys.executable, "-m", "culm", *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line
    err_text = proc.stderr.read().decode()
    assert proc.wait(timeout=100) == 0 and err_text == "", err_text


def test_giving_up_on_a_node_needs_no_component_module(tmp_path: Path) -> None:
    # The operator force-fails and skips a node whose module this shell does not import: neither
    # runs that node's component, so neither is refused, and the rest of the pipeline runs on.
    example = str(EXAMPLES / "callback_component.py")
    waiting = culm(tmp_path, "run", example, "--timeout", "3")
    assert waiting.returncode == 1 and "timed out after 3s" in waiting.stdout, waiting.stdout + waiting.stderr
    root = waiting.stdout.split("pipeline ")[1].split()[0]
    node = waiting.stdout.split("`culm callback ")[1].split()[0]
    # A failure text over MAX_EX_DATA_CHARS is cut as every failure text is (API, REST alike).
    forced = culm(tmp_path, "force-fail", node, "--ex-data", "E" * 60_000 + "F" * 60_000)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    with culm_runtime(f"sqlite:///{tmp_path / 'err.db'}") as rt:
        assert api.get_children_states(rt, node).data[node]["state"] == "FAILED"
        stored = api.get_execution_data_outputs(rt, node).data["ex_data"]
    assert len(stored) <= 100_000 and "120,000 characters" in stored, stored[49_000:49_400]
    assert stored.startswith("E" * 49_000) and stored.endswith("F" * 49_000)
    skipped = culm(tmp_path, "skip", node)
    assert skipped.returncode == 0 and f"pipeline {root} FINISHED" in skipped.stdout, skipped.stdout + skipped.stderr


def test_run_piped_into_a_reader_that_leaves_logs_no_receiver_errors(tmp_path: Path) -> None:
    # `culm run X | head -1`: the progress lines come from the engine's signal receivers, where the
    # closed pipe was logged as "ERROR culm.signals: receiver ... raised", once per state change.
    env = dict(os.environ, CULM_DATABASE_URL=f"sqlite:///{tmp_path / 'err.db'}")
    proc = subprocess.Popen([sys.executable, "-m", "culm", "run", str(EXAMPLES / "operator_session.py")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"running: pipeline order_1234")
    proc.stdout.close()
    err_text = proc.stderr.read().decode()
    assert proc.wait(timeout=100) in (0, 1) and "raised" not in err_text and "Traceback" not in err_text, err_text
    status = culm(tmp_path, "status", "order_1234", "--json")  # the run itself went on to the failure
    assert json.loads(status.stdout)["tree"]["children"]["charge_card"]["state"] == "FAILED"


def test_a_refused_run_prints_no_running_line(tmp_path: Path) -> None:
    assert culm(tmp_path, "run", str(EXAMPLES / "tree.json")).returncode == 0
    again = culm(tmp_path, "run", str(EXAMPLES / "tree.json"))
    assert again.returncode == 5 and again.stdout == "", again.stdout
    one_error(again, 5, "already exists", "--new-ids")
