"""The `culm` command line, run as a real subprocess against a temporary SQLite database."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import wait_until

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

FAILING_COMPONENT = '''
from culm.components import Component, Service


class ExplodingService(Service):
    def execute(self, data, parent_data):
        raise RuntimeError("the disk is on fire")


class ExplodingComponent(Component):
    code = "cli_test_exploding"
    name = "exploding"
    bound_service = ExplodingService
'''


def culm(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "CULM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", **(env or {})}
    full_env.pop("CULM_IMPORTS", None) if "CULM_IMPORTS" not in (env or {}) else None
    return subprocess.run(
        [sys.executable, "-m", "culm.cli", *args], cwd=tmp_path, env=full_env, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


def example_tree() -> dict:
    return json.loads((EXAMPLES / "tree.json").read_text())


def exploding_tree(tmp_path: Path) -> Path:
    (tmp_path / "exploding.py").write_text(FAILING_COMPONENT)
    tree = example_tree()
    tree["id"] = "pipeline_cli_exploding"
    tree["activities"]["node_done"]["component"]["code"] = "cli_test_exploding"
    tree["activities"]["node_done"]["name"] = "explode"
    path = tmp_path / "exploding.json"
    path.write_text(json.dumps(tree))
    return path


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("culm")
    assert script.exists(), "pip install -e . should install the `culm` script"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "validate" in out.stdout


def test_validate_good_tree(tmp_path: Path) -> None:
    out = culm(tmp_path, "validate", str(EXAMPLES / "tree.json"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "OK"


def test_validate_bad_tree_lists_every_problem(tmp_path: Path) -> None:
    tree = example_tree()
    tree["activities"]["node_done"]["component"]["code"] = "no_such_component"
    tree["flows"]["flow_3"]["target"] = "ghost"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(tree))
    out = culm(tmp_path, "validate", str(path))
    assert out.returncode == 2
    lines = out.stdout.splitlines()
    assert any(line.startswith("done (node_done): ") and "no_such_component" in line for line in lines)
    assert any(line.startswith("flow_3: ") and "ghost" in line for line in lines)
    assert "Traceback" not in out.stderr


def test_validate_and_run_print_an_id_holding_a_lone_surrogate_escaped(tmp_path: Path) -> None:
    # Found probing (session 16): JSON may write half of a UTF-16 pair ("\\ud800"); `culm validate`
    # printed the first problem naming such an id, then died with a UnicodeEncodeError traceback
    # at the next, which names the pipeline by its raw id.
    path = tmp_path / "surrogate.json"
    path.write_text('{"id": "p\\ud800", "start_event": {}}')
    for args in (["validate", str(path)], ["run", str(path)]):
        out = culm(tmp_path, *args)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "id holds a lone surrogate" in out.stdout + out.stderr
        assert "p\\ud800: pipeline key 'flows' must be a dict" in out.stdout + out.stderr  # escaped: no stream encodes it


def test_validate_refuses_variables_that_need_each_other(tmp_path: Path) -> None:
    tree = example_tree()
    tree["data"]["inputs"].update({"${ping}": {"type": "splice", "value": "${pong}"},
                                   "${pong}": {"type": "splice", "value": "${ping}!"}})
    path = tmp_path / "cycle.json"
    path.write_text(json.dumps(tree))
    out = culm(tmp_path, "validate", str(path))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "reference cycle between context variables: ${ping} -> ${pong} -> ${ping}" in out.stdout


def test_loop_times_changes_a_node_loop_and_refuses_what_is_not_one(tmp_path: Path) -> None:
    tree = example_tree()
    loop_node, other = list(tree["activities"])[:2]
    tree["activities"][loop_node]["loop_config"] = {"enable": True, "loop_times": 2}
    path = tmp_path / "loop.json"
    path.write_text(json.dumps(tree))
    assert culm(tmp_path, "run", str(path)).returncode == 0

    changed = culm(tmp_path, "loop-times", loop_node, "5")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert "changed the loop count of" in changed.stdout
    negative = culm(tmp_path, "loop-times", loop_node, "-1")
    assert negative.returncode == 2 and "expected a whole number, 0 or more" in negative.stderr
    not_a_loop = culm(tmp_path, "loop-times", other, "3")
    assert not_a_loop.returncode == 5 and "loop_config" in not_a_loop.stderr


def test_validate_prints_syntax_warnings_without_failing(tmp_path: Path) -> None:
    tree = example_tree()
    node = next(iter(tree["activities"].values()))
    node["component"]["inputs"]["shell"] = {"type": "splice", "value": "echo ${HOME:-x}"}
    path = tmp_path / "warn.json"
    path.write_text(json.dumps(tree))
    out = culm(tmp_path, "validate", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    warning = next(line for line in out.stdout.splitlines() if line.startswith("warning: "))
    assert node["id"] in warning and "'${HOME:-x}' at position 5" in warning and "stay text" in warning
    assert out.stdout.splitlines()[-1] == "OK"


def test_validate_a_module(tmp_path: Path) -> None:
    out = culm(tmp_path, "validate", str(EXAMPLES / "polling_component.py"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_run_json_tree_then_status(tmp_path: Path) -> None:
    out = culm(tmp_path, "run", str(EXAMPLES / "tree.json"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pipeline pipeline_example_tree FINISHED" in out.stdout
    assert "greet (node_greet)" in out.stdout  # progress lines name the nodes

    status = culm(tmp_path, "status", "pipeline_example_tree")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].split() == ["Pipeline", "pipeline_example_tree", "FINISHED", lines[0].split()[-1]]
    assert any(line.split()[1:5] == ["greet", "ServiceActivity", "node_greet", "FINISHED"] for line in lines)


def test_run_same_tree_twice_needs_new_ids(tmp_path: Path) -> None:
    assert culm(tmp_path, "run", str(EXAMPLES / "tree.json")).returncode == 0
    again = culm(tmp_path, "run", str(EXAMPLES / "tree.json"))
    assert again.returncode == 5 and "--new-ids" in again.stderr  # the engine refused a taken id
    assert again.stderr.splitlines()[-1].startswith("error: pipeline pipeline_example_tree already exists")
    fresh = culm(tmp_path, "run", "--new-ids", str(EXAMPLES / "tree.json"))
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "FINISHED" in fresh.stdout and "pipeline_example_tree" not in fresh.stdout


@pytest.mark.parametrize("name", ["quickstart.py", "parallel_exclusive_subprocess.py", "polling_component.py"])
def test_run_example_module(tmp_path: Path, name: str) -> None:
    out = culm(tmp_path, "run", str(EXAMPLES / name))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.rstrip().splitlines()[-1].endswith("FINISHED")


def test_run_with_data(tmp_path: Path) -> None:
    out = culm(tmp_path, "run", str(EXAMPLES / "tree.json"), "--data", '{"operator": "ann"}')
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("how", ["--import", "CULM_IMPORTS"])
def test_run_failing_component_reports_ex_data(tmp_path: Path, how: str) -> None:
    tree = exploding_tree(tmp_path)
    if how == "--import":
        out = culm(tmp_path, "run", str(tree), "--import", "exploding")
    else:
        out = culm(tmp_path, "run", str(tree), env={"CULM_IMPORTS": "exploding"})
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAILED explode (node_done)" in out.stdout
    assert "RuntimeError: the disk is on fire" in out.stdout
    assert "Traceback" not in out.stderr


def test_run_without_the_component_module_is_refused_before_it_starts(tmp_path: Path) -> None:
    out = culm(tmp_path, "run", str(exploding_tree(tmp_path)))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "explode (node_done): component 'cli_test_exploding' is not registered" in out.stderr
    assert "--import MODULE" in out.stderr
    assert not (tmp_path / "cli.db").exists() or "running" not in out.stdout


def test_set_outputs_of_a_failed_node_then_skip(tmp_path: Path) -> None:
    tree = exploding_tree(tmp_path)
    assert culm(tmp_path, "run", str(tree), "--import", "exploding").returncode == 1

    out = culm(tmp_path, "set-outputs", "node_done", "who=mended", "answer=42")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "updated the outputs of" in out.stdout
    # ${answer} is not a context value: as in bamboo it reaches only the outputs, and a note says so
    # (it went by without a word).
    assert "note: the pipeline pipeline_cli_exploding has no context value ${answer}: set only in the outputs of " \
        "node_done" in out.stderr, out.stderr
    assert "${who}" not in out.stderr
    from culm import Runtime, api

    with Runtime(f"sqlite:///{tmp_path / 'cli.db'}", workers=0) as rt:
        outputs = api.get_execution_data_outputs(rt, "node_done").data
        context = {v["key"]: v["value"] for v in
                   api.get_pipeline_debug_info(rt, "pipeline_cli_exploding").data["context_values"]}
    assert outputs["who"] == "mended" and outputs["answer"] == 42 and context["${who}"] == "mended"
    again = culm(tmp_path, "set-outputs", "node_greet", "who=x")
    assert again.returncode == 5 and "FINISHED" in again.stderr


def test_run_timeout_names_waiting_nodes(tmp_path: Path) -> None:
    out = culm(tmp_path, "run", str(EXAMPLES / "callback_component.py"), "--timeout", "2")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "timed out after 2s" in out.stdout
    assert "approval (" in out.stdout and "waits for a callback" in out.stdout
    assert "culm run --attach " in out.stdout


def test_run_invalid_tree_is_refused_with_every_problem(tmp_path: Path) -> None:
    tree = example_tree()
    tree["flows"]["flow_3"]["target"] = "ghost"
    path = tmp_path / "invalid.json"
    path.write_text(json.dumps(tree))
    out = culm(tmp_path, "run", str(path))
    assert out.returncode == 2
    assert "flow_3: " in out.stderr and "ghost" in out.stderr
    assert "error: invalid pipeline tree: 1 problem(s)" in out.stderr
    assert "Traceback" not in out.stderr
    # refused before it says it runs, and before a database is made
    assert "running" not in out.stdout and not (tmp_path / "cli.db").exists()


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["run", "missing.json"], "missing.json: no such file"),
        ("{not json", ["run", "broken.json"], "invalid JSON"),
        ("[1, 2]", ["run", "broken.json"], "must be an object"),
        ("{}", ["run", "broken.json", "--data", "[1]"], "--data must be a JSON object"),
        # JSON keeps the last of two equal keys: the first flow or activity was silently dropped
        ('{"id": "p", "flows": {"f1": {}, "f1": {}}}', ["validate", "broken.json"],
         "broken.json: key 'f1' appears twice in one object"),
        ("{}", ["run", "broken.json", "--data", '{"a": 1, "a": 2}'], "--data: key 'a' appears twice"),
        ("[" * 100_000 + "]" * 100_000, ["validate", "broken.json"], "broken.json: arrays or objects nested too deeply"),
        (None, ["run", str(EXAMPLES / "tree.json"), "--set", "who=" + "[" * 5_000 + "]" * 5_000],
         "arrays or objects nested too deeply"),
        # Python reads no int of more than 4,300 digits: each was a ValueError traceback (exit 1)
        ('{"id": ' + "9" * 5_000 + "}", ["validate", "broken.json"],
         "broken.json: a number in it has more than 4,300 digits"),
        ("{}", ["run", "broken.json", "--data", '{"a": ' + "9" * 5_000 + "}"],
         "--data: a number in it has more than 4,300 digits"),
        (None, ["run", str(EXAMPLES / "tree.json"), "--set", "who=" + "9" * 5_000], "more than 4,300 digits"),
        (None, ["run", "x.json", "--import", "no_such_module_here"], "no_such_module_here"),
        (None, ["validate", "missing.py"], "no such file"),
        (None, ["run", "."], "error: .: a folder, not a tree file (give a TREE.json or a MODULE.py)"),
        # a README given by mistake was only "invalid JSON", not what culm wanted instead
        (None, ["run", "README.md"], "error: README.md: expected a TREE.json or a MODULE.py; read as JSON, it "
                                     "fails: invalid JSON: Expecting value: line 1 column 1 (char 0)"),
        (None, ["validate", "README.md"], "error: README.md: expected a TREE.json or a MODULE.py"),
        (None, ["list", "--limit", "-1"], "error: --limit -1: expected a number of pipelines from 0 to 1000"),
        (None, ["list", "--offset", "-5"], "error: --offset -5: expected 0 or more"),
        (None, ["status", ""], "argument ID: expected an id, not ''"),  # was exit 5, "refused"
        (None, ["retry", " "], "argument NODE: expected an id, not ' '"),
        (None, ["list", "--since", "99999999999d"], "--since '99999999999d': further back than dates go"),
        # a negative or NaN timeout ended the wait at once (leaving the run behind) or never
        (None, ["run", "x.json", "--timeout", "-1"], "--timeout: expected a number of seconds, 0 or more, not '-1'"),
        (None, ["run", "x.json", "--timeout", "nan"], "--timeout: expected a number of seconds, 0 or more, not 'nan'"),
        (None, ["watch", "p1", "--interval", "0"], "--interval: expected a number of seconds above 0"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(tmp_path: Path, setup: str | None, args: list[str],
                                                message: str) -> None:
    if setup is not None:
        (tmp_path / "broken.json").write_text(setup)
    (tmp_path / "x.json").write_text("{}")
    (tmp_path / "README.md").write_text("# My pipelines\n\nRun them with culm.\n")
    out = culm(tmp_path, *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_module_is_reported_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "badmod.py").write_text("raise ValueError('module is broken')\n")
    (tmp_path / "nopipe.py").write_text("x = 1\n")
    bad = culm(tmp_path, "run", "badmod.py")
    assert bad.returncode == 2 and "ValueError: module is broken" in bad.stderr and "Traceback" not in bad.stderr
    nopipe = culm(tmp_path, "run", "nopipe.py")
    assert nopipe.returncode == 2 and "build_pipeline()" in nopipe.stderr


def test_status_of_unknown_id(tmp_path: Path) -> None:
    out = culm(tmp_path, "status", "nothing_here")
    assert out.returncode == 3 and "no database at" in out.stderr  # and none was created
    assert not (tmp_path / "cli.db").exists()
    assert culm(tmp_path, "run", str(EXAMPLES / "tree.json")).returncode == 0
    out = culm(tmp_path, "status", "nothing_here")
    assert out.returncode == 3 and "nothing_here" in out.stderr


def test_db_upgrade(tmp_path: Path) -> None:
    out = culm(tmp_path, "db", "upgrade", "--db", f"sqlite:///{tmp_path / 'fresh.db'}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("database schema is at version ")
    again = culm(tmp_path, "db", "upgrade", "--db", f"sqlite:///{tmp_path / 'fresh.db'}")
    assert again.returncode == 0 and again.stdout == out.stdout


def test_db_recount_counts_rows_written_behind_culm(tmp_path: Path) -> None:
    """A root state edited by hand is not in `culm list`'s counts until `culm db recount`."""
    assert culm(tmp_path, "run", str(EXAMPLES / "tree.json")).returncode == 0
    db = tmp_path / "cli.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE culm_state SET name = 'FAILED' WHERE parent_id = '' AND root_id <> ''")
    assert json.loads(culm(tmp_path, "list", "--json").stdout)["counts"] == {"FINISHED": 1}
    out = culm(tmp_path, "db", "recount", "--db", f"sqlite:///{db}")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "root pipelines counted again: FAILED 1\n"
    assert json.loads(culm(tmp_path, "list", "--json").stdout)["counts"] == {"FAILED": 1}


def test_worker_without_broker_is_refused(tmp_path: Path) -> None:
    out = culm(tmp_path, "worker", env={"CULM_BROKER_URL": ""})
    assert out.returncode == 2
    assert "broker" in out.stderr and "Traceback" not in out.stderr


def test_worker_with_a_missing_module_names_the_module_not_a_driver(tmp_path: Path) -> None:
    """It used to say `the driver 'examples' is not installed`: the module's import error, read as the DB's."""
    out = culm(tmp_path, "worker", "--broker", "redis://127.0.0.1:1/0", "--import", "nowhere_pkg.components")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "error: cannot import module 'nowhere_pkg.components': no such module on the path" in out.stderr
    assert "driver" not in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "usage", "message"),
    [
        (["stauts", "x"], "usage: culm [-h]", "invalid choice: 'stauts'; did you mean 'status'?"),
        (["db", "upgrde"], "usage: culm db ", "invalid choice: 'upgrde' (choose from 'upgrade', 'recount'); did you mean 'upgrade'?"),
        (["token", "create", "--role", "viewr"], "usage: culm token create ", "did you mean 'viewer'?"),
        (["run", "tree.json", "--frobnicate"], "usage: culm run ", "culm run: error: unrecognized arguments: --frobnicate"),
        (["list", "--bogus", "1"], "usage: culm list ", "culm list: error: unrecognized arguments: --bogus 1"),
        # never abbreviated: a typo is an error, not silently another flag
        (["list", "--lim", "3"], "usage: culm list ", "unrecognized arguments: --lim 3; did you mean '--limit'?"),
        (["status", "--js", "x"], "usage: culm status ", "unrecognized arguments: --js; did you mean '--json'?"),
        (["worker", "--concurr", "1"], "usage: culm worker ", "unrecognized arguments: --concurr 1"),
    ],
)
def test_a_mistyped_command_or_flag_names_it_with_the_commands_usage(tmp_path: Path, args: list[str], usage: str,
                                                                     message: str) -> None:
    out = culm(tmp_path, *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith(usage) and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "cli.db").exists()


def test_a_mistyped_command_suggests_the_nearest(tmp_path: Path) -> None:
    out = culm(tmp_path, "stauts", "x")
    assert out.stderr.rstrip().endswith("did you mean 'status'?"), out.stderr


def test_set_context_without_a_value_shows_a_whole_call(tmp_path: Path) -> None:
    assert culm(tmp_path, "run", str(EXAMPLES / "tree.json")).returncode == 0
    out = culm(tmp_path, "set-context", "pipeline_example_tree", "who")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "error: set-context 'who': expected KEY=VALUE (for example culm set-context pipeline_example_tree who=world)" \
        in out.stderr


def _waiting_for_callback(tmp_path: Path) -> str | None:
    """The id of the node the one pipeline of the database waits on for a callback, if any yet."""
    if not (tmp_path / "cli.db").exists():
        return None
    listed = culm(tmp_path, "list", "--json")
    if listed.returncode != 0 or not json.loads(listed.stdout)["items"]:
        return None
    status = json.loads(culm(tmp_path, "status", json.loads(listed.stdout)["items"][0]["id"], "--json").stdout)
    waiting = [n for n, e in status["tree"]["children"].items() if (e["wait_reason"] or {}).get("kind") == "callback"]
    return waiting[0] if waiting else None


def test_a_run_waiting_for_a_callback_finishes_on_culm_callback_from_another_shell(tmp_path: Path) -> None:
    """README: under `culm run`, the callback example waits for `culm callback NODE --data ...`."""
    env = {**os.environ, "CULM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    run = subprocess.Popen([sys.executable, "-m", "culm.cli", "run", str(EXAMPLES / "callback_component.py"),
                            "--timeout", "60"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        node = wait_until(lambda: _waiting_for_callback(tmp_path), 60, 0.2, what="the approval node to wait")
        # The run says so, with the command to send (the id shown, as the README says).
        assert run.stdout is not None
        shown = ""
        while "WAITING" not in shown:
            shown = run.stdout.readline()
            assert shown, "the run ended without saying that a node waits for a callback"
        assert f"WAITING   node approval ({node}) for a callback; from another shell: " \
               f"`culm callback {node} --data '{{...}}'`" in shown, shown
        called = culm(tmp_path, "callback", node, "--data", '{"approve": true, "approver": "me"}')
        assert called.returncode == 0, called.stdout + called.stderr
        out, _ = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 0, out
    assert out.rstrip().endswith("FINISHED") and f"FINISHED  node approval ({node})" in out


def test_logs_of_an_unknown_version_is_not_found(tmp_path: Path) -> None:
    assert culm(tmp_path, "run", str(EXAMPLES / "tree.json")).returncode == 0
    version = json.loads(culm(tmp_path, "status", "node_greet", "--json").stdout)["tree"]["version"]
    out = culm(tmp_path, "logs", "node_greet", "--version", "v_no_such")
    assert out.returncode == 3, out.stdout + out.stderr
    assert f"error: node node_greet has no version v_no_such (its versions: {version};" in out.stderr
    assert culm(tmp_path, "logs", "node_greet", "--version", version).returncode == 0


@pytest.mark.parametrize("args", [["list"], ["status", "x"], ["run", "tree.json"], ["workers"], ["db", "upgrade"], ["db", "recount"],
                                  ["token", "list"], ["serve", "--no-auth"]])
def test_a_database_url_of_another_kind_is_one_line_and_exit_4(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "tree.json").write_text(json.dumps(example_tree()))
    out = culm(tmp_path, *args, env={"CULM_DATABASE_URL": "postgress://culm:secret@db/culm"})
    assert out.returncode == 4, out.stdout + out.stderr
    assert out.stderr == ("error: cannot use the database URL 'postgress://culm:***@db/culm': culm keeps its data in "
                          "SQLite, PostgreSQL or MySQL/MariaDB, not 'postgress' (examples: sqlite:///culm.db, "
                          "postgresql://user@host/db, mysql://user@host/db)\n")


def test_the_worker_imports_a_module_file_named_in_culm_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`culm run` takes a MODULE.py from $CULM_IMPORTS; run_worker, which reads it again, used to
    `import_module("comp.py")` and stop the worker with ModuleNotFoundError."""
    from culm.components import library
    from culm.runtime import WorkerWiring

    import_components = WorkerWiring().import_plugins

    path = tmp_path / "cli_worker_file_comp.py"
    path.write_text(FAILING_COMPONENT.replace("cli_test_exploding", "cli_worker_file_comp") + "RUNS = [1]\n")
    monkeypatch.setenv("CULM_IMPORTS", str(path))
    try:
        assert import_components([]) == [str(path)]
        assert library.has("cli_worker_file_comp")
        module = sys.modules["cli_worker_file_comp"]
        import_components([])  # loaded already (`culm worker` imports it first): not run again
        assert sys.modules["cli_worker_file_comp"] is module and module.RUNS == [1]
    finally:
        sys.modules.pop("cli_worker_file_comp", None)
        library.unregister("cli_worker_file_comp")


def test_culm_workers_says_what_its_threads_are(tmp_path: Path) -> None:
    """`culm worker --concurrency 1 --pool threads` showed as "8 threads": the user-code threads of
    each process ($CULM_WORKER_THREADS), which --concurrency does not set; the line says so."""
    from culm.storage import SqlStore, SqlWorkerRegistry

    store = SqlStore(f"sqlite:///{tmp_path / 'cli.db'}")
    try:
        SqlWorkerRegistry(store).register("host:1:abc", 8, "culm")
        SqlWorkerRegistry(store).register("host:2:def", 4, "")  # an embedded runner (a `culm run`)
    finally:
        store.dispose()
    out = culm(tmp_path, "workers", "--dead-after", "3600")
    assert out.returncode == 0, out.stderr
    assert "alive" in out.stdout and ", 8 user-code threads, prefix culm" in out.stdout, out.stdout
    assert ", 4 user-code threads, an embedded runner, no queues  [host:2:def]" in out.stdout, out.stdout
    assert "$CULM_WORKER_THREADS" in culm(tmp_path, "worker", "--help").stdout


def test_logs_and_history_say_what_they_did_not_find(tmp_path: Path) -> None:
    """`culm logs PIPELINE` printed nothing and exited 0; a node without log lines was as silent as
    a typo; `history --loop 5` said the node had no earlier runs at all."""
    assert culm(tmp_path, "run", str(EXAMPLES / "operator_session.py")).returncode == 1
    out = culm(tmp_path, "logs", "order_1234")
    assert out.returncode == 2 and out.stderr == (
        "error: order_1234 is a pipeline: its nodes keep the logs (`culm status order_1234` lists them; "
        "then `culm logs NODE`)\n")
    out = culm(tmp_path, "logs", "order_start")
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "node order_start logged nothing\n"
    retried = culm(tmp_path, "retry", "charge_card", "--data", '{"amount": 80}', "--import",
                   str(EXAMPLES / "operator_session.py"))
    assert retried.returncode == 0, retried.stdout + retried.stderr
    out = culm(tmp_path, "history", "charge_card", "--loop", "5")
    assert out.returncode == 0 and out.stdout.startswith("node charge_card has no earlier runs in loop 5 ")
    assert "amount 250 is over the limit" in culm(tmp_path, "history", "charge_card", "--loop", "1").stdout


def test_an_empty_token_list_says_how_to_make_one(tmp_path: Path) -> None:
    assert culm(tmp_path, "run", str(EXAMPLES / "tree.json")).returncode == 0
    out = culm(tmp_path, "token", "list")
    assert out.returncode == 0 and out.stdout == ""
    assert out.stderr == "no token yet: create one with `culm token create --role viewer|operator|admin`\n"


@pytest.mark.parametrize(("args", "code", "stdout"), [
    (["workers"], 0, "no worker is registered\n"), (["workers", "--json"], 0, "[]\n"), (["token", "list"], 0, ""),
    (["token", "revoke", "abc"], 3, ""),
])
def test_reading_commands_of_admin_create_no_database(tmp_path: Path, args: list[str], code: int, stdout: str) -> None:
    """docs/cli.md: a read command never creates a database file; `workers` and `token list` did.
    A listing finds nothing there (exit 0, as `culm list`, with a note); revoking an id is "not found" (3)."""
    out = culm(tmp_path, *args)
    assert (out.returncode, out.stdout) == (code, stdout), out.stdout + out.stderr
    start = "note" if code == 0 else "error"
    assert out.stderr.startswith(f"{start}: no database at {tmp_path / 'cli.db'}: nothing has run there yet")
    assert not (tmp_path / "cli.db").exists()


def test_list_filtered_by_state_says_its_counts_are_of_every_state(tmp_path: Path) -> None:
    """`culm list --state RUNNING` printed "1 pipeline(s), showing 1-1   FINISHED 1 · RUNNING 1":
    a count of FINISHED pipelines under a list of RUNNING ones, unexplained."""
    assert culm(tmp_path, "run", str(EXAMPLES / "tree.json")).returncode == 0
    assert culm(tmp_path, "run", str(EXAMPLES / "operator_session.py")).returncode == 1
    out = culm(tmp_path, "list", "--state", "RUNNING")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "1 pipeline(s), showing 1-1   in every state: FINISHED 1 · RUNNING 1"
    assert culm(tmp_path, "list").stdout.splitlines()[-1] == "2 pipeline(s), showing 1-2   FINISHED 1 · RUNNING 1"


@pytest.mark.parametrize("args", [["workers"], ["db", "upgrade"], ["db", "recount"]])
def test_admin_commands_on_a_memory_database_are_one_line_and_exit_4(tmp_path: Path, args: list[str]) -> None:
    out = culm(tmp_path, *args, "--db", "memory://")
    assert out.returncode == 4, out.stdout + out.stderr
    assert out.stderr == ("error: culm keeps its data in SQLite, PostgreSQL or MySQL/MariaDB, not 'memory' "
                          "(database URL 'memory://')\n")


def test_data_from_a_file_that_is_not_text_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(b"\x00\xf3\xff binary")
    out = culm(tmp_path, "run", str(EXAMPLES / "tree.json"), "--data", "@blob.bin")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr == "error: --data: cannot read blob.bin: not UTF-8 text (byte 0xf3 at offset 1)\n"


def test_a_syntax_error_in_a_module_names_its_file_and_line(tmp_path: Path) -> None:
    """It said "(at .../culm/cli/loading.py:81)": where culm imports, not where the mistake is."""
    (tmp_path / "broken.py").write_text("x = 1\ndef build_pipeline(:\n")
    out = culm(tmp_path, "run", "broken.py")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr == f"error: broken.py: import failed: SyntaxError: invalid syntax (at {tmp_path / 'broken.py'}:2)\n"


def test_a_relative_sqlite_path_that_was_meant_absolute_says_four_slashes(tmp_path: Path) -> None:
    out = culm(tmp_path, "run", str(EXAMPLES / "tree.json"), "--db", "sqlite:///tmp/culm-trial.db")
    assert out.returncode == 4, out.stdout + out.stderr
    assert out.stderr == ("error: cannot create the database tmp/culm-trial.db: the directory tmp does not exist "
                          "(sqlite:///tmp/culm-trial.db is relative to the working directory; for "
                          "/tmp/culm-trial.db, write four slashes: sqlite:////tmp/culm-trial.db)\n")
    assert culm(tmp_path, "run", str(EXAMPLES / "tree.json"), "--new-ids", "--db", f"sqlite:///{tmp_path}/abs.db"
                ).returncode == 0
    relative = str(tmp_path / "abs.db").lstrip("/")
    out = culm(tmp_path, "list", "--db", f"sqlite:///{relative}")  # lists nothing there, with a note
    assert out.returncode == 0 and out.stderr.startswith("note: no database at") and out.stderr.endswith(
        f"(sqlite:///{relative} is relative to the working directory; for /{relative}, write four slashes: "
        f"sqlite:////{relative})\n"), out.stderr


def _watch_on_a_terminal(tmp_path: Path, *args: str) -> tuple[int, str]:
    """`culm watch` with a terminal as its stdout (the live view): exit code and what it showed."""
    import pty
    import select

    main, child = pty.openpty()
    env = {**os.environ, "CULM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "culm.cli", "watch", *args], cwd=tmp_path, env=env,
                            stdout=child, stderr=child, stdin=subprocess.DEVNULL)
    os.close(child)
    shown = b""
    deadline = time.monotonic() + 60
    try:
        while True:
            ready, _, _ = select.select([main], [], [], max(0.0, deadline - time.monotonic()))
            assert ready and time.monotonic() < deadline, "the watch did not end within 60 s"
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the watch ended: the terminal closed
                break
            if not chunk:
                break
            shown += chunk
        return proc.wait(30), shown.decode(errors="replace").replace("\r", "")
    finally:
        proc.kill()
        os.close(main)


@pytest.mark.parametrize("stdout", ["pipe", "terminal"])
def test_watch_stops_on_a_pipeline_held_by_a_failed_node_naming_it_with_its_ex_data(tmp_path: Path,
                                                                                     stdout: str) -> None:
    """bamboo keeps a pipeline RUNNING while a node is FAILED and nothing else runs: `culm watch` used
    to wait for it for ever; it now stops as `culm run` does, naming the node and its ex_data."""
    tree = exploding_tree(tmp_path)
    assert culm(tmp_path, "run", str(tree), "--import", "exploding").returncode == 1
    args = ("pipeline_cli_exploding", "--interval", "0.1")
    if stdout == "terminal":
        code, text = _watch_on_a_terminal(tmp_path, *args)
        out = subprocess.CompletedProcess([], code, text, "")
    else:
        out = culm(tmp_path, "watch", *args, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "FAILED explode (node_done)" in lines
    assert any("RuntimeError: the disk is on fire" in line for line in lines[lines.index("FAILED explode (node_done)"):])
    assert "pipeline pipeline_cli_exploding is RUNNING with 1 failed node(s); retry with" in out.stdout
    # On a SQLite file the retry runs the node in its own process: the hint asks for the module, as
    # `culm status`'s does (without it, the pasted command was refused, exit 2).
    assert "`culm retry node_done [--data '{...}'] --import MODULE`" in out.stdout, out.stdout
    assert "`culm skip node_done --import MODULE`" in out.stdout, out.stdout
    assert "Traceback" not in out.stderr
    status = culm(tmp_path, "status", "pipeline_cli_exploding")
    assert status.returncode == 1 and "RuntimeError: the disk is on fire" in status.stdout


def test_watch_watches_a_paused_pipeline_on_and_exits_1_on_a_revoked_one(tmp_path: Path) -> None:
    """A SUSPENDED pipeline can be resumed: watch stays; a REVOKED one has ended: exit 1."""
    out = culm(tmp_path, "run", str(EXAMPLES / "callback_component.py"), "--timeout", "1")
    assert out.returncode == 1 and "waits for a callback" in out.stdout, out.stdout + out.stderr
    root = json.loads(culm(tmp_path, "list", "--json").stdout)["items"][0]["id"]
    assert culm(tmp_path, "pause", root).returncode == 0
    env = {**os.environ, "CULM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    watch = subprocess.Popen([sys.executable, "-m", "culm.cli", "watch", root, "--interval", "0.1",
                              "--progress-every", "0.2"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        assert watch.stdout is not None
        # Progress lines come every 0.2 s: ten of them, and the paused pipeline is still watched
        # (the watch stops a pipeline held by failed nodes after 1 s of stillness).
        progress = 0
        while progress < 10:
            line = watch.stdout.readline()
            assert line, f"watch stopped on a paused pipeline (exit {watch.wait()})"
            progress += "nodes finished" in line
        assert watch.poll() is None
        assert culm(tmp_path, "revoke", root).returncode == 0
        rest, _ = watch.communicate(timeout=60)
    finally:
        watch.kill()
    assert watch.returncode == 1, rest
    assert "REVOKED" in rest


def test_pausing_a_paused_pipeline_or_resuming_a_running_one_says_so(tmp_path: Path) -> None:
    """A second `culm pause` is refused (exit 5) saying the pipeline is already paused, not that
    SUSPENDED is not READY or RUNNING or LOOP_READY; a `culm resume` of a running one, that it is not paused."""
    out = culm(tmp_path, "run", str(EXAMPLES / "callback_component.py"), "--timeout", "1")
    assert out.returncode == 1 and "waits for a callback" in out.stdout, out.stdout + out.stderr
    root = json.loads(culm(tmp_path, "list", "--json").stdout)["items"][0]["id"]
    assert culm(tmp_path, "pause", root).returncode == 0
    again = culm(tmp_path, "pause", root)
    assert again.returncode == 5, again.stdout + again.stderr
    assert again.stderr.strip().splitlines()[-1] == (
        f"error: cannot pause pipeline {root}: it is already paused (its state is SUSPENDED)")
    assert culm(tmp_path, "resume", root, "--no-follow").returncode == 0
    running = culm(tmp_path, "resume", root, "--no-follow")
    assert running.returncode == 5, running.stdout + running.stderr
    assert running.stderr.strip().splitlines()[-1] == (
        f"error: cannot resume pipeline {root}: it is not paused (its state is RUNNING)")
    status = json.loads(culm(tmp_path, "status", root, "--json").stdout)
    assert status["tree"]["state"] == "RUNNING", status["tree"]


def test_a_retry_whose_node_fails_again_names_the_failure_and_exits_0(tmp_path: Path) -> None:
    """docs/cli.md: a control command that runs the pipeline on follows it; when the node fails
    again, it names the failure with its ex_data; it exits 0 (the engine accepted the command: the
    contract keeps exit 1 for `culm run` and `culm status`, and `culm status` then exits 1)."""
    tree = exploding_tree(tmp_path)
    assert culm(tmp_path, "run", str(tree), "--import", "exploding").returncode == 1
    out = culm(tmp_path, "retry", "node_done", "--import", "exploding")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "retried explode (node_done)" in out.stdout
    assert "FAILED explode (node_done)" in out.stdout and "RuntimeError: the disk is on fire" in out.stdout
    assert culm(tmp_path, "status", "pipeline_cli_exploding").returncode == 1


FIVE_LINES = '''
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.components import Component, Service


class FiveLines(Service):
    def execute(self, data, parent_data):
        for i in range(5):
            self.logger.info("line %d", i)
        return True


class FiveLinesComponent(Component):
    code = "cli_five_lines"
    name = "five lines"
    bound_service = FiveLines


def build_pipeline():
    start = EmptyStartEvent()
    start.extend(ServiceActivity(id="node_five", component_code="cli_five_lines")).extend(EmptyEndEvent())
    return build_tree(start)
'''


def test_logs_print_a_page_and_say_which_lines_they_left_out(tmp_path: Path) -> None:
    """`culm logs` read every line of a run at once (a poller logging for days); it now prints one
    bounded page (the last lines by default) and says on stderr which lines it did not print."""
    (tmp_path / "five.py").write_text(FIVE_LINES)
    assert culm(tmp_path, "run", "five.py").returncode == 0
    lines = [f"[INFO] line {i}" for i in range(5)]
    out = culm(tmp_path, "logs", "node_five")
    assert (out.returncode, out.stdout.splitlines(), out.stderr) == (0, lines, "")
    out = culm(tmp_path, "logs", "node_five", "--offset", "1", "--limit", "2")
    assert (out.returncode, out.stdout.splitlines()) == (0, lines[1:3])
    assert out.stderr.startswith("lines 2-3 of 5 logged by node node_five (version ") and \
        out.stderr.endswith("; the next: --offset 3\n"), out.stderr
    out = culm(tmp_path, "logs", "node_five", "--limit", "2")
    assert out.stdout.splitlines() == lines[3:] and out.stderr.endswith("the earlier: --offset 0 --limit 3\n")
    for bad, said in ((["--limit", "0"], "argument --limit: expected a number of lines, 1 to 20000, not 0"),
                      (["--offset", "-1"], "argument --offset: expected a line number, 0 or more, not -1")):
        out = culm(tmp_path, "logs", "node_five", *bad)
        assert out.returncode == 2 and said in out.stderr, out.stderr


def test_the_status_hint_asks_for_the_import_the_retry_needs_and_tables_end_without_blanks(tmp_path: Path) -> None:
    """Found by a new user's trial (session 14): `culm status`'s failed-node hint gave a `culm retry`
    that, on a SQLite file, is refused without `--import` (it runs the node); `culm list` and
    `culm history` padded their last column with spaces. The hint's `--data` placeholder is
    `'{...}'` (it read `--data JSON`, as if JSON were the value), and the hinted retry works."""
    assert culm(tmp_path, "run", str(EXAMPLES / "operator_session.py")).returncode == 1
    status = culm(tmp_path, "status", "order_1234")
    assert status.returncode == 1
    assert status.stdout.splitlines()[-1] == (
        "1 failed node(s): retry with `culm retry charge_card [--data '{...}'] --import MODULE`, skip with "
        "`culm skip charge_card --import MODULE`, or stop with `culm revoke order_1234` (MODULE: the module or .py "
        "file that defines the components, as given to `culm run`)")
    retried = culm(tmp_path, "retry", "charge_card", "--data", '{"amount": 80}', "--import",
                   str(EXAMPLES / "operator_session.py"))
    assert retried.returncode == 0 and "pipeline order_1234 FINISHED" in retried.stdout, retried.stdout + retried.stderr
    for args in (("list",), ("history", "charge_card")):
        out = culm(tmp_path, *args)
        assert out.returncode == 0 and len(out.stdout.splitlines()) >= 2, out.stdout + out.stderr
        assert [line for line in out.stdout.splitlines() if line != line.rstrip()] == [], args
    assert "--data '{...}'" in culm(tmp_path, "retry", "--help").stdout


def test_a_control_command_loads_no_table_definitions_rich_or_sandbox(tmp_path: Path) -> None:
    """A control call's start is most of its time (storm5 saw 4-10 s per call under load): `culm
    pause` on a SQLite file needs SQLAlchemy and the engine, not the schema's Table objects (with
    the PostgreSQL and MySQL dialects their options load), rich (it prints one plain line) or
    Alembic (the file is at head)."""
    out = culm(tmp_path, "run", str(EXAMPLES / "callback_component.py"), "--timeout", "1")
    assert out.returncode == 1 and "waits for a callback" in out.stdout, out.stdout + out.stderr
    root = json.loads(culm(tmp_path, "list", "--json").stdout)["items"][0]["id"]
    probe = ("import sys\nfrom culm.cli import main\n"
             f"code = main(['pause', {root!r}, '--db', {'sqlite:///' + str(tmp_path / 'cli.db')!r}])\n"
             "heavy = ('rich', 'culm.storage.schema', 'sqlalchemy.dialects.postgresql', 'sqlalchemy.dialects.mysql',\n"
             "         'alembic')\n"
             "print(code, sorted(m for m in heavy if m in sys.modules))\n")
    shown = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-1] == "0 []", shown.stdout
    states = json.loads(culm(tmp_path, "status", root, "--json").stdout)
    assert states["tree"]["state"] == "SUSPENDED"


@pytest.mark.parametrize(("command", "line"), [
    ("callback", "error: cannot call back node charge_card: its state is FAILED, expected RUNNING"),
    ("force-fail", "error: cannot force-fail node charge_card: its state is FAILED, expected RUNNING"),
])
def test_a_command_the_node_s_state_refuses_says_so_before_asking_for_components(
        tmp_path: Path, command: str, line: str) -> None:
    """A new user's trial: `culm callback charge_card` on the FAILED node, without --import, was
    told to name the modules of component 'charge' (exit 2); the node's state refuses it anyway."""
    assert culm(tmp_path, "run", str(EXAMPLES / "operator_session.py")).returncode == 1
    out = culm(tmp_path, command, "charge_card")
    assert (out.returncode, out.stderr) == (5, line + "\n"), out.stdout + out.stderr
    status = culm(tmp_path, "status", "order_1234", "--json")
    assert '"FAILED"' in status.stdout  # nothing changed


def test_a_command_follows_the_engine_s_verdict_not_the_state_read_before_it(tmp_path: Path) -> None:
    """Review 17 (R4): the CLI reads the node's state before it sends the command, and took a state
    that refuses the command for the answer: a node that moved RUNNING -> FAILED in between was
    "retried", and the CLI returned at once without running the pipeline on. The read is made stale
    here (it says RUNNING; the node is FAILED): the engine takes the retry, and the CLI follows it."""
    assert culm(tmp_path, "run", str(EXAMPLES / "operator_session.py")).returncode == 1
    probe = ("import sys\nimport culm.cli.control as control\nfrom culm.cli import main\n"
             "read = control.state_entry\n"
             "def stale(rt, target):\n"
             "    entry = dict(read(rt, target))\n"
             "    entry['state'] = 'RUNNING'  # as read an instant before the node failed\n"
             "    return entry\n"
             "control.state_entry = stale\n"
             f"sys.exit(main(['retry', 'charge_card', '--data', '{{\"amount\": 80}}', '--import', "
             f"{str(EXAMPLES / 'operator_session.py')!r}, '--db', {'sqlite:///' + str(tmp_path / 'cli.db')!r}]))\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "retried charge card (charge_card)" in out.stdout
    assert "pipeline order_1234 FINISHED" in out.stdout, out.stdout
    assert culm(tmp_path, "status", "order_1234").returncode == 0


def test_a_callback_whose_schedule_fails_the_node_names_why(tmp_path: Path) -> None:
    """Session 19's trial: `culm callback NODE --data '{"approve": false}'` said nothing while the
    schedule it ran returned False and failed the node. It follows the pipeline and names the
    failed node and why; it exits 0, the command accepted (the contract keeps exit 1 for `run`
    and `status`: `culm status` of the node exits 1)."""
    example = str(EXAMPLES / "callback_component.py")
    assert culm(tmp_path, "run", example, "--timeout", "1").returncode == 1
    node = _waiting_for_callback(tmp_path)
    assert node is not None
    out = culm(tmp_path, "callback", node, "--data", '{"approve": false}', "--import", example)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"called back approval ({node})" in out.stdout
    assert "schedule() returned False" in out.stdout, out.stdout
    assert "Traceback" not in out.stderr
    status = culm(tmp_path, "status", node, "--json")
    assert json.loads(status.stdout)["tree"]["state"] == "FAILED"
    # The retry that approves it: the pipeline finishes, exit 0.
    retried = culm(tmp_path, "retry", node, "--import", example)
    assert retried.returncode == 0 or "waits" in retried.stdout, retried.stdout + retried.stderr


def test_the_list_names_the_nodes_a_running_pipeline_waits_on_with_their_ids(tmp_path: Path) -> None:
    """Session 19's trial: `culm list` said `RUNNING (1 failed)` and nothing of a pipeline that
    waits for a callback; which step, and the id to act on, took a `culm status` each. The list
    now names them, name and id, as the console's list does."""
    assert culm(tmp_path, "run", str(EXAMPLES / "operator_session.py")).returncode == 1
    assert culm(tmp_path, "run", str(EXAMPLES / "callback_component.py"), "--timeout", "1").returncode == 1
    approval = _waiting_for_callback(tmp_path)
    listed = culm(tmp_path, "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:-1]}
    assert "RUNNING (1 failed: charge card (charge_card))" in rows["order_1234"], listed.stdout
    (waiting,) = (row for pid, row in rows.items() if pid != "order_1234")
    assert f"RUNNING (waits for a callback: approval ({approval}))" in waiting, listed.stdout


ENDLESS_POLL = '''
from culm.components import Component, Service
from culm.components.service import StaticIntervalGenerator


class EndlessService(Service):
    __need_schedule__ = True
    interval = StaticIntervalGenerator(0.2)

    def execute(self, data, parent_data):
        return True

    def schedule(self, data, parent_data, callback_data=None):
        return True  # polls for ever


class EndlessComponent(Component):
    code = "cli_test_endless"
    name = "endless"
    bound_service = EndlessService
'''


def _paused_endless_poll(tmp_path: Path) -> None:
    """Pipeline pipeline_example_tree, paused, its node polling for ever (module ``endless``)."""
    (tmp_path / "endless.py").write_text(ENDLESS_POLL)
    tree = example_tree()
    tree["activities"]["node_greet"]["component"]["code"] = "cli_test_endless"
    (tmp_path / "endless.json").write_text(json.dumps(tree))
    assert culm(tmp_path, "run", "endless.json", "--import", "endless", "--timeout", "1").returncode == 1
    assert culm(tmp_path, "pause", "pipeline_example_tree", "--no-follow").returncode == 0


def test_ctrl_c_while_a_control_command_follows_exits_130(tmp_path: Path) -> None:
    """A control command that follows the pipeline (here `culm resume` of a node that polls for
    ever) took Ctrl-C, said "interrupted", and then exited 0 as if it had completed: it exits 130
    as `culm run` and `culm watch` do, the command recorded."""
    _paused_endless_poll(tmp_path)
    env = {**os.environ, "CULM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    follow = subprocess.Popen([sys.executable, "-m", "culm.cli", "resume", "pipeline_example_tree", "--import", "endless"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline().startswith("resumed "), "the command did not say it resumed"
        follow.send_signal(signal.SIGINT)
        out, errors = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 130, out + errors
    assert "interrupted: pipeline pipeline_example_tree is not finished" in errors and "Traceback" not in errors
    status = json.loads(culm(tmp_path, "status", "pipeline_example_tree", "--json").stdout)
    assert status["tree"]["state"] == "RUNNING"  # resumed: the command was recorded


# A real SIGINT to the command itself, at one instant: as it writes its "resumed ..." line (CI of
# main a0c7f9e, a loaded machine: the test's Ctrl-C, sent once it read that line, came before the
# follow began and the command said only "interrupted"), or as the engine's answer comes back.
CTRL_C_AT = {
    "line": ("class Out:\n"
             "    def __init__(self, out): self.out = out\n"
             "    def __getattr__(self, name): return getattr(self.out, name)\n"
             "    def write(self, text):\n"
             "        n = self.out.write(text)\n"
             "        if text.startswith('resumed '): os.kill(os.getpid(), signal.SIGINT)\n"
             "        return n\n"
             "sys.stdout = Out(sys.stdout)\n"),
    "answer": ("import culm.api\n"
               "resume = culm.api.resume_pipeline\n"
               "def answered(*args, **kwargs):\n"
               "    res = resume(*args, **kwargs)\n"
               "    os.kill(os.getpid(), signal.SIGINT)\n"
               "    return res\n"
               "culm.api.resume_pipeline = answered\n"),
}


@pytest.mark.parametrize(("moment", "said"), [
    ("line", "interrupted: pipeline pipeline_example_tree is not finished; continue it with "),
    ("answer", "interrupted: pipeline pipeline_example_tree is not finished, and whether "
               "`culm resume pipeline_example_tree` was recorded is not known (`culm status pipeline_example_tree` "
               "shows it); continue it with "),
])
def test_ctrl_c_before_a_control_command_follows_says_what_is_unfinished(
        tmp_path: Path, moment: str, said: str) -> None:
    _paused_endless_poll(tmp_path)
    probe = ("import os, signal, sys\nfrom culm.cli import main\n" + CTRL_C_AT[moment]
             + "sys.exit(main(['resume', 'pipeline_example_tree', '--import', 'endless']))\n")
    env = {**os.environ, "CULM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 130, out.stdout + out.stderr
    assert said in out.stderr and "Traceback" not in out.stderr, out.stderr
    status = json.loads(culm(tmp_path, "status", "pipeline_example_tree", "--json").stdout)
    assert status["tree"]["state"] == "RUNNING"  # resumed: the command was recorded
