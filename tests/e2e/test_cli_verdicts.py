"""What `culm list --json` names, and what a control command says the engine decided (real
`culm` processes on a SQLite file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_cli import EXAMPLES, culm

import culm as culm_package
from culm.web.app import create_app

pytestmark = pytest.mark.timeout(300)


def _failed_and_waiting(tmp_path: Path) -> tuple[str, str]:
    """One pipeline held by a failed node and one waiting for a callback: their ids."""
    failed = culm(tmp_path, "run", str(EXAMPLES / "operator_session.py"))
    assert failed.returncode == 1 and "FAILED charge card (charge_card)" in failed.stdout, failed.stdout + failed.stderr
    waiting = culm(tmp_path, "run", str(EXAMPLES / "callback_component.py"), "--timeout", "1")
    assert waiting.returncode == 1 and "waits for a callback" in waiting.stdout, waiting.stdout + waiting.stderr
    items = json.loads(culm(tmp_path, "list", "--json").stdout)["items"]
    return "order_1234", next(i["id"] for i in items if i["id"] != "order_1234")


NAMED = ("failed_nodes", "failed_node_list", "callback_nodes", "callback_node_count")


def test_list_json_names_the_failed_and_waiting_nodes_as_the_rest_list_does(tmp_path: Path) -> None:
    """`culm list --json` had only id, name, state and times: the table, the REST list and the
    console name the failed nodes and those waiting for a callback; now the JSON does too, in the
    REST list's shape."""
    failed_id, waiting_id = _failed_and_waiting(tmp_path)
    listed = culm(tmp_path, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    cli = json.loads(listed.stdout)
    by_id = {item["id"]: item for item in cli["items"]}
    assert by_id[failed_id]["failed_nodes"] == 1
    assert by_id[failed_id]["failed_node_list"] == [{"node_id": "charge_card", "name": "charge card"}]
    assert by_id[failed_id]["callback_nodes"] == [] and by_id[failed_id]["callback_node_count"] == 0
    (waits,) = by_id[waiting_id]["callback_nodes"]
    assert waits["name"] == "approval" and waits["kind"] == "callback" and by_id[waiting_id]["callback_node_count"] == 1
    assert (cli["limit"], cli["offset"]) == (50, 0)
    # The same fields, and values, as the REST list API gives for the same database.
    with culm_package.Runtime(f"sqlite:///{tmp_path / 'cli.db'}", workers=0) as rt:
        client = TestClient(create_app(rt, auth_enabled=False), base_url="http://127.0.0.1")
        rest = client.get("/api/v1/pipelines").json()
    assert [i["id"] for i in rest["items"]] == [i["id"] for i in cli["items"]]
    for mine, theirs in zip(cli["items"], rest["items"], strict=True):
        assert set(mine) == set(theirs), (mine, theirs)
        assert {k: mine.get(k) for k in NAMED} == {k: theirs.get(k) for k in NAMED}
    # The table names the same nodes.
    table = culm(tmp_path, "list").stdout
    assert "RUNNING (1 failed: charge card (charge_card))" in table
    assert f"RUNNING (waits for a callback: approval ({waits['node_id']}))" in table


PIPELINE_COMMANDS = [["pause"], ["resume"], ["revoke"], ["set-context", "{id}", "who=world"]]
NODE_COMMANDS = [["retry"], ["retry-subprocess"], ["skip"], ["force-fail"], ["callback"], ["pause-node"],
                 ["resume-node"], ["set-outputs", "{id}", "x=1"], ["loop-times", "{id}", "3"],
                 ["skip-exclusive-gateway", "{id}", "--flow", "f"],
                 ["skip-conditional-parallel-gateway", "{id}", "--flows", "f", "--converge", "c"]]


def _call(command: list[str], target: str) -> list[str]:
    args = [a.replace("{id}", target) for a in command]
    return args if target in args else [args[0], target, *args[1:]]


def test_every_control_command_on_an_ended_pipeline_says_the_engine_refused_it(tmp_path: Path) -> None:
    """`culm set-context` of a FINISHED pipeline printed "updated the context of" and exited 0:
    the engine stored values nothing reads. Every control command on a FINISHED or REVOKED
    pipeline (or a node of one) now prints the engine's refusal, with its reason, and exits 5."""
    finished = culm(tmp_path, "run", str(EXAMPLES / "tree.json"))
    assert finished.returncode == 0, finished.stdout + finished.stderr
    failed_id, _waiting = _failed_and_waiting(tmp_path)
    assert culm(tmp_path, "revoke", failed_id).returncode == 0
    for pipeline, node in [("pipeline_example_tree", "node_done"), (failed_id, "charge_card")]:
        for command, target in [*((c, pipeline) for c in PIPELINE_COMMANDS), *((c, node) for c in NODE_COMMANDS)]:
            out = culm(tmp_path, *_call(command, target))
            said = out.stdout + out.stderr
            assert out.returncode == 5, (command, said)
            assert out.stdout == "" and "Traceback" not in said, (command, said)
            line = out.stderr.strip()
            assert line.startswith("error: ") and "\n" not in line and target in line, (command, line)
    ended = culm(tmp_path, "set-context", "pipeline_example_tree", "who=world")
    assert ended.stderr.strip() == ("error: cannot update the context of pipeline pipeline_example_tree: it has "
                                    "ended (state FINISHED); nothing reads its context any more")


def test_control_commands_name_a_missing_id_or_a_node_given_for_a_pipeline(tmp_path: Path) -> None:
    """An unknown id is "not found" (exit 3) for every command; a node's id where a pipeline's
    is needed (`culm pause NODE`, `culm set-context NODE`) is a usage mistake (exit 2) naming the
    pipeline to give, as a pipeline's id given to a node command is."""
    assert culm(tmp_path, "run", str(EXAMPLES / "tree.json")).returncode == 0
    for command in [*PIPELINE_COMMANDS, *NODE_COMMANDS]:
        out = culm(tmp_path, *_call(command, "nowhere"))
        assert out.returncode == 3, (command, out.stdout + out.stderr)
        assert out.stderr.strip().startswith("error: ") and "nowhere" in out.stderr and "Traceback" not in out.stderr
    for command in PIPELINE_COMMANDS:
        out = culm(tmp_path, *_call(command, "node_done"))
        assert out.returncode == 2, (command, out.stdout + out.stderr)
        assert out.stderr.strip() == (f"error: node_done is a ServiceActivity node of pipeline pipeline_example_tree: "
                                      f"`culm {command[0]}` takes a pipeline or a SubProcess node "
                                      f"(`culm {command[0]} pipeline_example_tree`)")


def test_a_retry_in_a_paused_pipeline_says_it_waits_for_a_resume_at_once(tmp_path: Path) -> None:
    """The retried node of a paused pipeline is parked READY: `culm retry` followed it until its
    --timeout (600 s), as if it were about to run. It now says at once that the pipeline is
    paused (exit 0: the retry was accepted), and `culm resume` runs it on."""
    session = str(EXAMPLES / "operator_session.py")
    assert culm(tmp_path, "run", session).returncode == 1
    assert culm(tmp_path, "pause", "order_1234").returncode == 0
    retried = culm(tmp_path, "retry", "charge_card", "--data", '{"amount": 80}', "--import", session, timeout=60)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "pipeline order_1234 is SUSPENDED and waits:" in retried.stdout
    assert "pipeline paused by an operator; resume it to go on" in retried.stdout
    assert retried.stdout.rstrip().endswith(f"resume it with `culm resume order_1234 --import {session}` "
                                            "(or stop it with `culm revoke order_1234`)"), retried.stdout
    resumed = culm(tmp_path, "resume", "order_1234", "--import", session, timeout=60)
    assert resumed.returncode == 0 and resumed.stdout.rstrip().endswith("pipeline order_1234 FINISHED"), resumed.stdout
