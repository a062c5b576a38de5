"""The operator's commands run as subprocesses, on the embedded runtime and on a cluster (PostgreSQL +
Redis with real `culm worker`s): output (human and ``--json``), exit codes and the state changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from backends import HERE, REPO
from support import wait_until

import culm
from culm import api
from culm.builder import (
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ServiceActivity,
    Var,
    build_tree,
)

pytestmark = pytest.mark.timeout(180)


@dataclass
class Cli:
    """Runs ``culm`` against one database (and, for a cluster, its broker and queue prefix)."""

    db: str
    broker: str | None
    prefix: str
    cwd: Path

    @property
    def cluster(self) -> bool:
        return self.broker is not None

    def env(self) -> dict[str, str]:
        env = dict(os.environ, CULM_DATABASE_URL=self.db, CULM_IMPORTS="components",
                   PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]))
        env.pop("CULM_BROKER_URL", None)
        if self.broker:
            env.update(CULM_BROKER_URL=self.broker, CULM_QUEUE_PREFIX=self.prefix)
        return env

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", "culm", *args], cwd=self.cwd, env=self.env(), text=True,
                             capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        assert "Traceback" not in out.stderr, out.stderr
        return out

    def json(self, *args: str) -> Any:
        out = self(*args, "--json")
        return json.loads(out.stdout)

    def state(self, node_id: str) -> str:
        found = self("status", node_id, "--json")
        assert found.returncode in (0, 1), found.stderr
        return str(json.loads(found.stdout)["tree"]["state"])

    def wait_state(self, node_id: str, state: str, timeout: float = 30) -> None:
        wait_until(lambda: self.state(node_id) == state, timeout, 0.3, what=f"{node_id} to be {state}")


@pytest.fixture(params=["sqlite", "postgres-redis"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    if request.param == "sqlite":
        return Cli(f"sqlite:///{tmp_path / 'ops.db'}", None, "culm", tmp_path)
    backend = request.getfixturevalue("backend_pool").get(request.param)
    backend.ensure_workers(2)
    return Cli(backend.db_url, backend.broker_url, backend.prefix, tmp_path)


def tree_file(cli: Cli, *codes: str, name: str | None = None, inputs: dict | None = None) -> tuple[Path, dict, list]:
    """A JSON tree of activities in a row (named ``step1``...), written to the working directory."""
    start = EmptyStartEvent()
    acts = []
    tail = start
    for i, code in enumerate(codes, 1):
        act = ServiceActivity(component_code=code, name=f"step{i}")
        for key, value in (inputs or {}).items():
            setattr(act.component.inputs, key, Var(type=Var.PLAIN, value=value))
        acts.append(act.id)
        tail = tail.extend(act)
    tail.extend(EmptyEndEvent())
    tree = build_tree(start, data=Data(inputs={"${who}": Var(type=Var.PLAIN, value="nobody")}))
    tree["name"] = name or f"ops-{uuid.uuid4().hex[:8]}"
    path = cli.cwd / f"{tree['name']}.json"
    path.write_text(json.dumps(tree))
    return path, tree, acts


def run_until_failed(cli: Cli, path: Path, tree: dict) -> subprocess.CompletedProcess:
    out = cli("run", str(path))
    assert out.returncode == 1, out.stdout + out.stderr
    return out


# -- the operator's session ---------------------------------------------------------------------
def test_fail_status_retry_with_new_data_finished(cli: Cli) -> None:
    path, tree, (node,) = tree_file(cli, "t_fail")
    root = tree["id"]
    out = run_until_failed(cli, path, tree)
    assert f"FAILED step1 ({node})" in out.stdout and "t_fail said no" in out.stdout
    assert f"culm retry {node} [--data" in out.stdout  # the one failed node named: the hint can be pasted

    status = cli("status", root)
    assert status.returncode == 1
    assert f"step1  ServiceActivity  {node}  FAILED" in status.stdout
    assert "ex_data: t_fail said no" in status.stdout
    assert "waits: failed; an operator may retry it" in status.stdout
    data = cli.json("status", root)
    assert data["failed"] == [node]
    assert data["tree"]["children"][node]["ex_data"] == "t_fail said no"
    assert data["tree"]["children"][node]["wait_reason"]["kind"] == "failed"
    assert data["tree"]["name"] == tree["name"]

    listed = cli.json("list", "--name", tree["name"])
    assert listed["total"] == 1 and listed["items"][0]["state"] == "RUNNING"
    human = cli("list", "--name", tree["name"])
    assert root in human.stdout and "RUNNING 1" in human.stdout

    retried = cli("retry", node, "--data", '{"ok": true}')
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert f"retried step1 ({node})" in retried.stdout
    if not cli.cluster:
        assert f"pipeline {root} FINISHED" in retried.stdout  # the embedded runtime ran it on
    cli.wait_state(root, "FINISHED")

    done = cli("status", root, "--outputs")
    assert done.returncode == 0
    assert "retry=1" in done.stdout and "output done = True" in done.stdout
    history = cli.json("history", node)
    assert len(history) == 1 and history[0]["outputs"]["ex_data"] == "t_fail said no"
    assert "t_fail said no" in cli("history", node).stdout
    assert cli.json("list", "--name", tree["name"], "--state", "finished")["total"] == 1


def test_callback_pause_resume_and_watch(cli: Cli) -> None:
    path, tree, (node,) = tree_file(cli, "t_callback")
    root = tree["id"]
    if cli.cluster:
        out = cli("run", str(path), "--timeout", "3")
        assert "submitted to the workers" in out.stdout
        assert f"culm watch {root}" in out.stdout
    else:
        out = cli("run", str(path), "--timeout", "3")
        assert f"culm run --attach {root}" in out.stdout
    assert out.returncode == 1 and "timed out after 3s" in out.stdout
    assert f"step1 ({node}): waits for a callback with version" in out.stdout

    status = cli("status", root)
    assert status.returncode == 0 and "└── waits for a callback with version" in status.stdout
    assert "waits: waits" not in status.stdout  # said once
    assert cli("pause", root).returncode == 0
    paused = cli.json("status", root)
    assert paused["tree"]["state"] == "SUSPENDED" and paused["tree"]["wait_reason"]["kind"] == "paused"
    resumed = cli("resume", root, "--no-follow")
    assert resumed.returncode == 0 and "resumed" in resumed.stdout

    watch = subprocess.Popen([sys.executable, "-m", "culm", "watch", root, "--interval", "0.2"], cwd=cli.cwd,
                             env=cli.env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    called = cli("callback", node, "--data", '{"ok": true}')
    assert called.returncode == 0, called.stdout + called.stderr
    assert f"called back step1 ({node})" in called.stdout
    try:
        out_text, err_text = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, out_text + err_text
    assert f"FINISHED  step1 ({node})" in out_text
    assert "3/3 nodes finished" in out_text
    cli.wait_state(root, "FINISHED")


def test_revoke_exits_1_on_status(cli: Cli) -> None:
    path, tree, (node,) = tree_file(cli, "t_callback")
    root = tree["id"]
    cli("run", str(path), "--timeout", "1")
    assert cli("revoke", root).returncode == 0
    cli.wait_state(root, "REVOKED")
    status = cli("status", root)
    assert status.returncode == 1 and "REVOKED" in status.stdout
    again = cli("revoke", root)
    assert again.returncode == 5 and "REVOKED" in again.stderr


def test_a_revoked_pipelines_failed_node_is_not_offered_a_retry(embedded: Cli) -> None:
    # A new user's trial: after `culm revoke`, status and watch still said "an operator may retry
    # it ... skip it or revoke the pipeline" and printed the retry and revoke commands, which the
    # engine then refused (its pipeline is revoked).
    path, tree, (node,) = tree_file(embedded, "t_fail")
    root = tree["id"]
    run_until_failed(embedded, path, tree)
    assert embedded("revoke", root).returncode == 0
    status = embedded("status", root)
    assert status.returncode == 1, status.stdout + status.stderr
    assert f"waits: failed; pipeline {root} is revoked: it can no longer be retried or skipped" in status.stdout
    assert "1 failed node(s) inside a revoked pipeline: they can no longer be retried or skipped" in status.stdout
    assert "culm retry" not in status.stdout and "culm revoke" not in status.stdout
    reason = embedded.json("status", root)["tree"]["children"][node]["wait_reason"]
    assert reason["kind"] == "failed" and reason["revoked"] is True
    watched = embedded("watch", root)
    assert watched.returncode == 1, watched.stdout + watched.stderr
    assert "revoked, they can no longer be retried or skipped" in watched.stdout
    assert "culm retry" not in watched.stdout
    refused = embedded("retry", node)
    assert refused.returncode == 5 and "revoked" in refused.stderr
    # A node's own status has no progress line, and no empty line in its place.
    alone = embedded("status", node)
    assert alone.returncode == 1 and not alone.stdout.endswith("\n\n"), repr(alone.stdout)


def test_skip_force_fail_pause_node_and_set_context(cli: Cli) -> None:
    path, tree, (first, second) = tree_file(cli, "t_callback", "t_fail")
    root = tree["id"]
    cli("run", str(path), "--timeout", "1")
    assert cli("set-context", root, "who=world").returncode == 0
    with culm.Runtime(cli.db, workers=0) as rt:
        values = {v["key"]: v["value"] for v in api.get_pipeline_debug_info(rt, root).data["context_values"]}
    assert values["${who}"] == "world"
    undeclared = cli("set-context", root, "ghost=1")
    assert undeclared.returncode == 2 and "has no context value ${ghost} (it has: ${who})" in undeclared.stderr

    assert cli("pause-node", second).returncode == 0
    failed = cli("force-fail", first, "--ex-data", "operator gave up")
    assert failed.returncode == 0, failed.stderr
    cli.wait_state(first, "FAILED")
    assert "ex_data: operator gave up" in cli("status", root).stdout
    assert cli.json("status", first)["tree"]["ex_data"] == "operator gave up"
    assert cli("skip", first).returncode == 0
    cli.wait_state(second, "SUSPENDED")
    assert cli.json("status", second)["tree"]["wait_reason"]["kind"] == "pause_appointed"
    assert cli("resume-node", second).returncode == 0
    cli.wait_state(second, "FAILED")
    assert cli("skip", second).returncode == 0
    cli.wait_state(root, "FINISHED")
    assert cli.json("status", first)["tree"]["skip"] is True


def test_force_fail_takes_any_failure_message_as_the_api_does(cli: Cli) -> None:
    """``forced_fail_activity(node_id, ex_data: str)`` takes any string, as bamboo's does, and so does
    the REST API: ``--ex-data ''`` stores an empty ex_data (it used to exit 2); no option stores
    the REST API's default."""
    path, tree, (first, second) = tree_file(cli, "t_callback", "t_callback")
    cli("run", str(path), "--timeout", "1")
    cli.wait_state(first, "RUNNING")
    emptied = cli("force-fail", first, "--ex-data", "")
    assert emptied.returncode == 0, emptied.stderr
    cli.wait_state(first, "FAILED")
    with culm.Runtime(cli.db, workers=0) as rt:
        assert api.get_execution_data_outputs(rt, first).data["ex_data"] == ""
    assert cli("skip", first).returncode == 0
    cli.wait_state(second, "RUNNING")
    assert cli("force-fail", second).returncode == 0
    cli.wait_state(second, "FAILED")
    with culm.Runtime(cli.db, workers=0) as rt:
        assert api.get_execution_data_outputs(rt, second).data["ex_data"] == "forced to fail by an operator"


def test_engine_refusals_exit_5_and_unknown_ids_exit_3(cli: Cli) -> None:
    path, tree, (node,) = tree_file(cli, "example_component")
    assert cli("run", str(path)).returncode == 0 or cli.cluster
    cli.wait_state(tree["id"], "FINISHED")
    for args in (["retry", node], ["skip", node], ["retry-subprocess", node], ["pause-node", node],
                 ["skip-exclusive-gateway", node, "--flow", "f1"],
                 ["skip-conditional-parallel-gateway", node, "--flows", "f1", "f2", "--converge", "c"],
                 ["callback", node, "--data", "{}"], ["force-fail", node]):
        out = cli(*args)
        assert out.returncode == 5, (args, out.stdout, out.stderr)
        assert out.stderr.startswith("error: ") and node in out.stderr
    for args in (["retry", "nope"], ["status", "nope"], ["logs", "nope"], ["history", "nope"], ["pause", "nope"],
                 ["watch", "nope"]):
        out = cli(*args)
        assert out.returncode == 3, (args, out.stdout, out.stderr)
        assert "nope" in out.stderr


# -- the embedded runtime only ------------------------------------------------------------------
@pytest.fixture
def embedded(tmp_path: Path) -> Cli:
    return Cli(f"sqlite:///{tmp_path / 'ops.db'}", None, "culm", tmp_path)


def test_run_attach_continues_an_interrupted_run(embedded: Cli) -> None:
    path, tree, (node,) = tree_file(embedded, "t_callback")
    root = tree["id"]
    proc = subprocess.Popen([sys.executable, "-m", "culm", "run", str(path)], cwd=embedded.cwd, env=embedded.env(),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    def waits() -> Any:
        out = embedded("status", root, "--json")  # exit 4 or 3 until the run has stored it
        return out.returncode == 0 and json.loads(out.stdout)["tree"]["children"].get(node, {}).get("wait_reason")

    try:
        wait_until(waits, 60, 0.3, what="the callback wait")
        proc.send_signal(signal.SIGTERM)
        out_text, err_text = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out_text + err_text
    assert f"interrupted: pipeline {root} is not finished" in err_text
    assert f"culm run --attach {root}" in err_text

    # Recorded only: nobody runs this database's work until the run is attached again.
    assert embedded("callback", node, "--data", '{"ok": true}', "--no-follow").returncode == 0
    attached = embedded("run", "--attach", root)
    assert attached.returncode == 0, attached.stdout + attached.stderr
    assert f"pipeline {root} FINISHED" in attached.stdout


def test_a_run_another_process_runs_is_followed_there_not_attached(embedded: Cli) -> None:
    # A new user's trial: with `culm serve` running the file's work, `culm run --timeout` said
    # "continue it with `culm run --attach ...`", though the service goes on with it anyway.
    import components  # noqa: F401 - the runner below runs t_callback

    path, tree, (node,) = tree_file(embedded, "t_callback")
    with culm.Runtime(embedded.db):  # this process holds the file's runner lock
        out = embedded("run", str(path), "--timeout", "2")
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"step1 ({node}): waits for a callback with version" in out.stdout
        assert "another process runs the work of" in out.stdout
        assert f"follow it with `culm watch {tree['id']}`" in out.stdout
        assert "--attach" not in out.stdout


def test_run_set_overrides_a_declared_input_and_refuses_others(embedded: Cli) -> None:
    path, tree, _ = tree_file(embedded, "example_component")
    bad = embedded("run", str(path), "--set", "nobody=1")
    assert bad.returncode == 2 and "--set nobody: the tree declares no context input ${nobody}" in bad.stderr
    assert "(it declares: who)" in bad.stderr
    good = embedded("run", str(path), "--set", "who=world")
    assert good.returncode == 0, good.stdout + good.stderr
    with culm.Runtime(embedded.db, workers=0) as rt:
        values = {v["key"]: v["value"] for v in api.get_pipeline_debug_info(rt, tree["id"]).data["context_values"]}
    assert values["${who}"] == "world"


def test_status_shows_outputs_json_cannot_write(embedded: Cli) -> None:
    # An int of more than 4,300 digits was a traceback in both forms; --json wrote a NaN as a bare
    # NaN (not JSON), and failed on the tuple key and on the list holding itself.
    path, tree, (node,) = tree_file(embedded, "t_awkward")
    assert embedded("run", str(path)).returncode == 0
    human = embedded("status", tree["id"], "--outputs")
    assert human.returncode == 0 and "output long = '<an integer of 16,610 bits, too long to show>'" in human.stdout
    found = embedded("status", tree["id"], "--outputs", "--json")
    assert found.returncode == 0, found.stderr
    outputs = json.loads(found.stdout, parse_constant=lambda name: pytest.fail(f"{name} in {found.stdout}"))[
        "tree"]["children"][node]["outputs"]
    assert outputs["long"] == "<an integer of 16,610 bits, too long to show>" and outputs["nan"] == "NaN"
    assert outputs["pair"] == {"(1, 2)": "p"} and outputs["itself"] == ["a", "<cycle>"]


def test_logs_and_follow(embedded: Cli) -> None:
    path, tree, (node,) = tree_file(embedded, "t_log")
    assert embedded("run", str(path)).returncode == 0
    logs = embedded("logs", node)
    assert logs.returncode == 0 and logs.stdout.strip()
    assert embedded("logs", node, "--follow").stdout == logs.stdout  # an ended node: follow returns


def test_list_filters_pages_and_closed_pipe(embedded: Cli) -> None:
    for _ in range(3):
        path, _tree, _ = tree_file(embedded, "example_component", name="nightly")
        assert embedded("run", "--new-ids", str(path)).returncode == 0
    page = embedded.json("list", "--limit", "2", "--since", "1h")
    assert page["total"] == 3 and len(page["items"]) == 2 and page["counts"] == {"FINISHED": 3}
    assert embedded.json("list", "--before", "1h")["total"] == 0
    assert embedded.json("list", "--state", "RUNNING,REVOKED")["total"] == 0
    piped = subprocess.run(f"{sys.executable} -m culm list | head -1", shell=True, cwd=embedded.cwd,
                           env=embedded.env(), capture_output=True, text=True, timeout=60)
    assert piped.stdout.startswith("ID") and piped.stderr == ""


def test_status_says_when_no_process_runs_the_files_work(embedded: Cli) -> None:
    # A run stopped (--timeout, Ctrl-C) while a node polls: the pipeline stays RUNNING, and nothing
    # moves it until a process takes the file's runner lock. `culm status` now says so, and how.
    path, tree, (node,) = tree_file(embedded, "t_slow_poll")
    stopped = embedded("run", str(path), "--timeout", "2")
    assert stopped.returncode == 1 and "timed out after 2s" in stopped.stdout, stopped.stdout + stopped.stderr
    status = embedded("status", tree["id"])
    assert status.returncode == 0, status.stdout + status.stderr
    assert "no process runs the work of" in status.stdout, status.stdout
    assert f"`culm run --attach {tree['id']} --import MODULE`" in status.stdout
    # `culm watch` said nothing and waited for ever: it now says so first (and Ctrl-C stops it).
    watch = subprocess.Popen([sys.executable, "-m", "culm", "watch", tree["id"]], cwd=embedded.cwd,
                             env=embedded.env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert watch.stderr is not None
        assert watch.stderr.readline().startswith("note: no process runs the work of")
    finally:
        watch.send_signal(signal.SIGINT)
        _, watch_err = watch.communicate(timeout=60)
    assert watch.returncode == 130 and "Traceback" not in watch_err, watch_err

    # While a process runs it (here: the attached run), no such note.
    proc = subprocess.Popen([sys.executable, "-m", "culm", "run", "--attach", tree["id"]], cwd=embedded.cwd,
                            env=embedded.env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: "no process runs" not in embedded("status", tree["id"]).stdout or proc.poll() is not None,
                   60, 0.3, what="the note to go once the attached run holds the file")
        assert proc.poll() is None, proc.communicate()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert embedded("revoke", tree["id"]).returncode == 0


def test_list_marks_running_pipelines_with_failed_nodes(embedded: Cli) -> None:
    path, tree, (node,) = tree_file(embedded, "t_fail")
    assert embedded("run", str(path)).returncode == 1
    listed = embedded("list")
    row = next(line for line in listed.stdout.splitlines() if line.startswith(tree["id"]))
    # The failed node by name and id (the id `culm retry` and `culm skip` take).
    assert f"RUNNING (1 failed: step1 ({node}))" in row, listed.stdout
    assert embedded("skip", node).returncode == 0
    row = next(line for line in embedded("list").stdout.splitlines() if line.startswith(tree["id"]))
    assert "FINISHED" in row and "failed" not in row


def test_a_command_the_engine_refuses_exits_5_without_the_components_imported(embedded: Cli) -> None:
    # A new user's trial: `culm callback NODE` / `culm retry NODE` on a node of a FINISHED (or
    # REVOKED) pipeline, without --import, was told to import the pipeline's components (exit 2),
    # although nothing of it would run: the engine's refusal is the answer (exit 5).
    path, tree, (node,) = tree_file(embedded, "t_fail")
    assert embedded("run", str(path)).returncode == 1
    assert embedded("skip", node).returncode == 0
    embedded.wait_state(tree["id"], "FINISHED")
    revoked_path, revoked, (waiting,) = tree_file(embedded, "t_fail")
    assert embedded("run", str(revoked_path)).returncode == 1
    assert embedded("revoke", revoked["id"]).returncode == 0
    bare = dict(embedded.env())
    bare.pop("CULM_IMPORTS")
    for target, args in ((node, ["retry", node]), (node, ["callback", node, "--data", "{}"]),
                         (waiting, ["retry", waiting]), (waiting, ["callback", waiting])):
        out = subprocess.run([sys.executable, "-m", "culm", *args], cwd=embedded.cwd, env=bare, text=True,
                             capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        assert out.returncode == 5, (args, out.stdout, out.stderr)
        first = out.stderr.splitlines()[0]
        assert first.startswith("error: ") and "cannot " in first and "--import" not in out.stderr, out.stderr
        assert first.count(target) == 1, first  # said once: not "retry X: cannot retry node X: ..."
    # A pipeline that can still run its nodes is still refused before anything changes (exit 2).
    live_path, live, (failed,) = tree_file(embedded, "t_fail")
    assert embedded("run", str(live_path)).returncode == 1
    out = subprocess.run([sys.executable, "-m", "culm", "retry", failed], cwd=embedded.cwd, env=bare, text=True,
                         capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "'t_fail' that are not registered in this process" in out.stderr, out.stderr


def test_watch_prints_a_stalled_wait_once_not_every_second(embedded: Cli) -> None:
    # A new user's trial: `culm watch` of a pipeline whose step nobody takes printed the same
    # 300-character "stalled" line every second, its only change the "due for N s" count.
    path, tree, (node,) = tree_file(embedded, "t_fail")
    root = tree["id"]
    assert embedded("run", str(path)).returncode == 1  # then nobody runs the file's work
    assert embedded("retry", node, "--no-follow").returncode == 0  # a step due, not taken

    def stalled() -> Any:
        out = embedded("status", root, "--json")
        reason = json.loads(out.stdout)["tree"].get("wait_reason") or {}
        return reason if reason.get("kind") == "stalled" else None

    wait_until(stalled, 60, 0.3, what="the pipeline to be reported stalled")
    watch = subprocess.Popen([sys.executable, "-m", "culm", "watch", root, "--interval", "0.2"], cwd=embedded.cwd,
                             env=embedded.env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    printed: list[str] = []
    reader = threading.Thread(target=lambda: printed.extend(watch.stdout or ()), daemon=True)
    reader.start()
    try:
        # Once watch has said it (its start takes seconds on a loaded machine: ci23a saw nothing
        # printed yet), the reason's text changes every second ("due for N s"): let it change
        # three times while watch looks every 0.2 s.
        wait_until(lambda: any("not taken" in line for line in printed), 60, 0.1, what="watch to print the stall")
        since = float(stalled()["text"].split(" due for ", 1)[1].split(" s ", 1)[0])
        wait_until(lambda: float(stalled()["text"].split(" due for ", 1)[1].split(" s ", 1)[0]) >= since + 3,
                   60, 0.3, what="the stalled count to move on")
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(60)  # stdout is the reader's to drain; stderr holds a line or two
        reader.join(10)
        err = watch.stderr.read() if watch.stderr else ""
    assert watch.returncode == 130 and "Traceback" not in err, err
    lines = [line for line in printed if "not taken" in line]
    assert len(lines) == 1 and root in lines[0], printed
    assert embedded("revoke", root).returncode == 0


def _bare(cli: Cli, *args: str) -> subprocess.CompletedProcess:
    """``culm ARGS`` without $CULM_IMPORTS: the components are not registered in its process."""
    bare = dict(cli.env())
    bare.pop("CULM_IMPORTS")
    return subprocess.run([sys.executable, "-m", "culm", *args], cwd=cli.cwd, env=bare, text=True,
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)


def test_pause_warns_that_resume_will_need_the_components(embedded: Cli) -> None:
    # A new user's trial: `culm pause` of a pipeline waiting for a callback said nothing, and the
    # `culm resume` after it refused for want of --import. The pause says so now, in one line.
    path, tree, (node,) = tree_file(embedded, "t_callback")
    root = tree["id"]
    assert embedded("run", str(path), "--timeout", "2").returncode == 1
    paused = _bare(embedded, "pause", root)
    assert paused.returncode == 0 and "paused" in paused.stdout, paused.stdout + paused.stderr
    notes = [line for line in paused.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and f"`culm resume {root}` will need --import" in notes[0], paused.stderr
    assert "t_callback" in notes[0]
    refused = _bare(embedded, "resume", root)
    assert refused.returncode == 2 and "--import" in refused.stderr  # what the note announced
    assert embedded("resume", root, "--no-follow").returncode == 0
    # With the components named, nothing to warn about.
    again = embedded("pause", root)
    assert again.returncode == 0 and "note:" not in again.stderr, again.stderr
    assert embedded("revoke", root).returncode == 0


def test_a_callback_failing_without_ex_data_says_which_call_returned_false(embedded: Cli) -> None:
    # A new user's trial: a callback whose schedule() returned False (setting no ex_data) failed the
    # node with "(no ex_data)" only. As in bamboo nothing is stored; what is shown says why.
    path, tree, (node,) = tree_file(embedded, "t_callback")
    root = tree["id"]
    assert embedded("run", str(path), "--timeout", "2").returncode == 1
    called = embedded("callback", node, "--data", '{"ok": false}')  # accepted: the node fails after
    assert f"called back step1 ({node})" in called.stdout, called.stdout + called.stderr
    why = f"(no ex_data: node {node} failed: component t_callback's schedule() returned False and set no ex_data)"
    assert why in called.stdout, called.stdout
    assert why in embedded("status", root).stdout
    outputs = embedded.json("status", root, "--outputs")["tree"]["children"][node]
    assert "ex_data" not in outputs.get("outputs", {})  # the stored outputs stay bamboo's
    assert embedded("revoke", root).returncode == 0
