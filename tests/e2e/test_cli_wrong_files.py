"""A careless user's wrong files: ``--db`` naming another program's SQLite file or a folder, a tree
file that is binary or empty. Each is one ``error:`` line naming the file and what is wrong with
it, with the contract's exit code (4 for the database, 2 for the tree), never a traceback; and
another program's database is left as it was (culm's tables are added to it only by an explicit
``culm db upgrade --shared-file``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_cli_exit_codes import culm

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
TREE = str(REPO / "examples" / "tree.json")
PIPELINE = "pipeline_example_tree"
THEIRS = ("accounts", "audit", "invoices", "orders", "payments", "sessions", "users")


def tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    """A SQLite file of another program: seven tables of its own, none of culm's, rows in one."""
    path = tmp_path / "other-programs.db"
    with sqlite3.connect(path) as conn:
        for name in THEIRS:
            conn.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, note TEXT)")
        conn.execute("INSERT INTO users (note) VALUES ('alice')")
    conn.close()
    return path


COMMANDS = {
    "list": ["list"],
    "status": ["status", PIPELINE],
    "history": ["history", "node_done"],
    "pause": ["pause", PIPELINE],
    "workers": ["workers"],
    "token list": ["token", "list"],
    "run": ["run", TREE],
    "db upgrade": ["db", "upgrade"],
    "db recount": ["db", "recount"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_another_programs_sqlite_file_is_refused_with_exit_4_and_left_as_it_was(foreign: Path, name: str) -> None:
    out = culm(foreign.parent, *COMMANDS[name], "--db", f"sqlite:///{foreign}")
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 4, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    line = lines[0]
    assert line.startswith(f"error: the database file {foreign} holds no culm tables"), line
    # Which tables it holds (a few of them, and how many more), and the explicit way to share it.
    assert "it holds 7 other table(s) (accounts, audit, invoices, orders, payments and 2 more)" in line, line
    assert f"culm db upgrade --db sqlite:///{foreign} --shared-file" in line, line
    assert tables(foreign) == sorted(THEIRS)  # nothing of culm's added


def test_db_upgrade_shared_file_adds_culms_tables_beside_the_others_then_run_works(foreign: Path) -> None:
    url = f"sqlite:///{foreign}"
    out = culm(foreign.parent, "db", "upgrade", "--db", url, "--shared-file")
    assert out.returncode == 0, out.stdout + out.stderr
    present = tables(foreign)
    assert set(THEIRS) <= set(present) and "culm_state" in present, present
    assert culm(foreign.parent, "run", TREE, "--db", url).returncode == 0
    listed = culm(foreign.parent, "list", "--db", url)
    assert listed.returncode == 0 and "1 pipeline(s)" in listed.stdout, listed.stdout + listed.stderr
    with sqlite3.connect(foreign) as conn:  # the other program's rows are untouched
        assert conn.execute("SELECT note FROM users").fetchall() == [("alice",)]
    conn.close()


def test_an_empty_or_missing_file_is_still_made_culms_database(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    assert culm(tmp_path, "run", TREE, "--db", f"sqlite:///{empty}").returncode == 0
    assert "culm_state" in tables(empty)
    fresh = tmp_path / "fresh.db"
    assert culm(tmp_path, "run", TREE, "--db", f"sqlite:///{fresh}").returncode == 0
    assert "culm_state" in tables(fresh)


@pytest.mark.parametrize("args", [["list"], ["status", PIPELINE], ["run", TREE], ["db", "upgrade"]])
def test_a_folder_as_database_says_it_is_a_folder_with_exit_4(tmp_path: Path, args: list[str]) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    out = culm(tmp_path, *args, "--db", f"sqlite:///{folder}")
    assert out.returncode == 4, (out.returncode, out.stdout, out.stderr)
    assert out.stderr == (f"error: cannot use the database {folder}: it is a folder, not a SQLite file (name a "
                          f"file in it: sqlite:///{folder / 'culm.db'})\n")
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("name", ["tree.bin", "tree.json"])
def test_a_binary_tree_file_is_not_utf8_text_at_its_offset(tmp_path: Path, command: str, name: str) -> None:
    (tmp_path / name).write_bytes(b'{"id": "\xc3\x28"}')
    out = culm(tmp_path, command, name)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stderr == f"error: {name}: not UTF-8 text (byte 0xc3 at offset 8)\n"
    assert not (tmp_path / "codes.db").exists()


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("name", ["tree.txt", "tree.json"])
def test_an_empty_tree_file_says_the_file_is_empty(tmp_path: Path, command: str, name: str) -> None:
    (tmp_path / name).touch()
    out = culm(tmp_path, command, name)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stderr == f"error: {name}: the file is empty (expected a pipeline tree: a JSON object)\n"


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("blank", [" ", "\n\n", " \t\r\n  \n"])
def test_a_whitespace_only_tree_file_says_the_file_is_empty(tmp_path: Path, command: str, blank: str) -> None:
    """Session 19's trial: a tree file of blank lines said `invalid JSON: Expecting value: line 3
    column 1`; like the empty file's, the message says what is wrong: there is nothing in it."""
    (tmp_path / "tree.json").write_text(blank)
    out = culm(tmp_path, command, "tree.json")
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stderr == ("error: tree.json: the file is empty: it holds only whitespace (expected a pipeline "
                          "tree: a JSON object)\n")
    assert not (tmp_path / "codes.db").exists()


@pytest.mark.parametrize(("content", "said"), [("", "the file is empty"), ("\n  \n", "the file is empty: it holds only whitespace")])
def test_an_empty_data_file_says_the_file_is_empty(tmp_path: Path, content: str, said: str) -> None:
    (tmp_path / "data.json").write_text(content)
    (tmp_path / "tree.json").write_text(Path(TREE).read_text())
    out = culm(tmp_path, "run", "tree.json", "--data", "@data.json")
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stderr == f"error: --data: data.json: {said} (expected a JSON object)\n"


def test_a_sqlite_url_with_a_query_string_names_its_file_not_the_whole_text(tmp_path: Path) -> None:
    """Session 19's trial: `--db 'sqlite:///x.db?timeout=5'` created a file named `x.db?timeout=5`
    (and a read looked for one); the query string is the driver's, the file is x.db."""
    db = "sqlite:///x.db?timeout=5"
    out = culm(tmp_path, "run", TREE, db=db)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(("x.db-", "x.db.runner"))) == ["x.db"]
    assert any(t.startswith("culm_") for t in tables(tmp_path / "x.db"))
    status = culm(tmp_path, "status", PIPELINE, db=db)
    assert status.returncode == 0, status.stdout + status.stderr
    # Read-only through a SQLite URI: the reads work, a command that writes is refused up front.
    ro = "sqlite:///file:x.db?mode=ro&uri=true"
    listed = culm(tmp_path, "list", "--json", db=ro)
    assert listed.returncode == 0 and PIPELINE in listed.stdout, listed.stdout + listed.stderr
    run = culm(tmp_path, "run", TREE, "--new-ids", db=ro)
    assert (run.returncode, run.stderr) == (4, f"error: cannot use the database URL {ro!r}: it opens the file "
                                               "read-only (mode=ro or immutable), and this command writes to it\n")


@pytest.mark.parametrize(("url", "said"), [
    ("sqlite:///x.db?timout=5", "unknown parameter timout (a sqlite URL takes timeout, isolation_level, "
     "detect_types, check_same_thread, cached_statements, uri; with uri=true also mode, cache, vfs, immutable, "
     "nolock, psow, modeof)"),
    ("sqlite:///x.db?mode=ro", "unknown parameter mode (a SQLite URI parameter: add uri=true and write the file "
     "as file:PATH, e.g. sqlite:///file:culm.db?mode=ro&uri=true)"),
    ("sqlite:///x.db?timeout=soon", "timeout=soon is not a number of seconds"),
    ("sqlite:///x.db?mode=ro&uri=true", "mode needs a SQLite URI: write the file as file:x.db "
     "(sqlite:///file:x.db?mode=ro&uri=true)"),
    ("sqlite:///x.db?timeout=inf", "timeout=inf is not a number of seconds from 0 to 2147483 (the busy timeout "
     "SQLite waits for a lock)"),
    ("sqlite:///file:q%23dir/x.db?uri=true", "the file name 'q%23dir/x.db' of a SQLite URI (uri=true) holds %, "
     "which SQLite reads its own way (# starts a fragment, % an escape): rename the file, or name it without "
     "uri=true"),
])
@pytest.mark.parametrize("command", [["run", TREE], ["status", PIPELINE], ["list"]])
def test_a_sqlite_url_parameter_culm_cannot_pass_on_is_refused_by_name(
        tmp_path: Path, url: str, said: str, command: list[str]) -> None:
    out = culm(tmp_path, *command, db=url)
    assert (out.returncode, out.stderr) == (4, f"error: cannot use the database URL {url!r}: {said}\n"), out.stdout
    assert list(tmp_path.iterdir()) == []

