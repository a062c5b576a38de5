"""A database whose culm tables are gone (dropped by hand, a partial restore, a schema dropped under
a running ``culm serve``): every CLI command exits 4 and the REST API answers 503, each with a
message naming the missing table and the way to make the schema whole, never a 500, an exit 5 or
a bare driver error ("OperationalError: no such table: culm_state")."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_cli_exit_codes import culm as culm_cli  # the same call: CULM_DATABASE_URL=codes.db in cwd

import culm
from culm import api
from culm.storage.migrate import HEAD_REVISION
from culm.web.app import create_app

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
TREE = str(REPO / "examples" / "tree.json")
PIPELINE, NODE = "pipeline_example_tree", "node_done"
TABLES = (
    "culm_pipeline",
    "culm_state",
    "culm_root_count",
    "culm_node",
    "culm_history",
    "culm_log",
    "culm_execution_data",
    "culm_node_data",
    "culm_context_value",
    "culm_callback_data",
)


def drop(path: Path, *, version_too: bool = False) -> None:
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for name in names:
            if name in TABLES or (version_too and name.startswith("culm_")):
                conn.execute(f"DROP TABLE {name}")


@pytest.fixture(scope="module")
def dropped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at head with a FINISHED run of TREE, then culm's main tables dropped."""
    folder = tmp_path_factory.mktemp("missing")
    assert culm_cli(folder, "run", TREE).returncode == 0
    drop(folder / "codes.db")
    return folder


COMMANDS = {
    "list": ["list"],
    "status": ["status", PIPELINE],
    "logs": ["logs", NODE],
    "history": ["history", NODE],
    "watch": ["watch", PIPELINE],
    "pause": ["pause", PIPELINE],
    "retry": ["retry", NODE],
    "callback": ["callback", NODE, "--data", "{}"],
    "set-context": ["set-context", PIPELINE, "who=x"],
    "run": ["run", TREE, "--new-ids"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_command_on_a_database_missing_culm_tables_exits_4_naming_table_and_fix(
    dropped: Path, name: str
) -> None:
    out = culm_cli(dropped, *COMMANDS[name])
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 4, (out.returncode, out.stdout, out.stderr)
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "has no culm table culm_" in last, last
    assert (
        f"records schema revision {HEAD_REVISION}" in last
        and f"culm db upgrade --db sqlite:///{dropped}" in last
    ), last


def test_rest_answers_503_naming_the_missing_table_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "web.db"
    runtime = culm.Runtime(f"sqlite:///{path}", workers=0)
    try:
        tree = json.loads(Path(TREE).read_text())
        assert api.run_pipeline(runtime, tree).result
        client = TestClient(create_app(runtime, auth_enabled=False), base_url="http://127.0.0.1")
        assert client.get("/api/v1/pipelines").status_code == 200
        drop(path)
        for url in ("/api/v1/pipelines", f"/api/v1/pipelines/{PIPELINE}"):
            answer = client.get(url)
            assert answer.status_code == 503, (url, answer.status_code, answer.text)
            detail = answer.json()["detail"]
            assert "has no culm table culm_" in detail and "Restore it from a backup" in detail, detail
            assert "culm db upgrade --db" in detail, detail
        answer = client.post(f"/api/v1/pipelines/{PIPELINE}/pause")
        assert answer.status_code == 503, answer.text
        # Everything dropped, the version record too: culm's schema is simply not there.
        drop(path, version_too=True)
        answer = client.get("/api/v1/pipelines")
        assert answer.status_code == 503, answer.text
        detail = answer.json()["detail"]
        assert "culm's schema is not there" in detail and "run `culm db upgrade --db sqlite:///" in detail, (
            detail
        )
    finally:
        runtime.close()


def test_the_api_result_names_the_missing_table(tmp_path: Path) -> None:
    path = tmp_path / "api.db"
    with culm.Runtime(f"sqlite:///{path}", workers=0) as runtime:
        drop(path)
        result = api.get_pipeline_states(runtime, PIPELINE)
        assert not result.result and isinstance(result.exc, culm.errors.SchemaMissingError)
        assert "has no culm table culm_state" in result.message, result.message
        # Another failure is not mistaken for one.
        assert runtime.database_problem(ValueError("no such column: x")) is None


def test_a_token_check_on_a_database_missing_its_token_table_answers_503(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    runtime = culm.Runtime(f"sqlite:///{path}", workers=0)
    try:
        app = create_app(runtime)
        token, _ = app.state.tokens.create("viewer", "test")
        client = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/v1/pipelines", headers=headers).status_code == 200
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TABLE culm_api_token")
        answer = client.get("/api/v1/pipelines", headers=headers)
        assert answer.status_code == 503, answer.text  # was a 500
        assert "has no culm table culm_api_token" in answer.json()["detail"], answer.text
    finally:
        runtime.close()


@pytest.mark.parametrize(
    ("message", "table"),
    [
        ("no such table: culm_state", "culm_state"),
        ('relation "public.culm_task" does not exist', "culm_task"),
        ("Table 'test.culm_log' doesn't exist", "culm_log"),
        ("no such table: myapp_audit", None),
        ('relation "audit" does not exist', None),
        ("Table 'test.audit' doesn't exist", None),
    ],
)
def test_only_a_missing_culm_table_is_a_missing_schema(message: str, table: str | None) -> None:
    """A user's table missing (read by a signal receiver or an expression function through an API
    call) is not culm's schema to upgrade: it was answered 503 'run culm db upgrade'."""
    from culm.storage.migrate import missing_table

    assert missing_table(RuntimeError(message)) == table
