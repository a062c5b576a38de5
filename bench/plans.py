"""Do the statements of new work read more when the database is full? ``python -m bench.plans``

Load-independent evidence for issue 20's scale target: runs the same work on an empty and on a
full server database (``bench.stored``'s, 100,000 finished pipelines) and asks the server how much
each statement read, not how long it took. The work, with the statements caught per thread as the
driver sends them (psycopg's and PyMySQL's cursor ``execute``/``executemany``):

* ``run_pipeline``: the statements the caller's thread sends in ``api.run_pipeline`` (10 calls);
* ``engine``: what the runtime's engine threads send to run those 10 pipelines to FINISHED (the
  batch steps);
* ``states``: ``api.get_pipeline_states`` of a paused (running) pipeline with nothing kept;
* ``list``: ``api.list_pipelines`` as the console's first page asks it.

Once the runtime is closed every distinct statement (per kind, its first parameters) is run again
under the server's plan reader, in a transaction rolled back: PostgreSQL ``EXPLAIN (ANALYZE,
BUFFERS, FORMAT JSON)`` (rows the scans read, Rows Removed by Filter included, and shared buffers
hit + read), MariaDB/MySQL ``ANALYZE FORMAT=JSON`` (rows examined: r_rows x r_loops of each table,
and the access type/key used). A statement that cannot run again (a unique key already taken) is
planned only (``EXPLAIN``: the estimate, marked ``est``). One JSON line per statement whose reads
grow (``full > 2 x empty + 20``), that scans a table whole or reads more than :data:`BIG` rows on the
full database (the engine's combined writes differ in shape between runs: those are judged on the
full side alone), then a summary.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import create_engine

from bench.trees import normal_pipeline

BIG = 2000  # rows one statement of this work may read on the full database (a scan reads 100,000s)
_WORDS = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")


def _norm(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


def _shape(sql: str) -> str:
    """The statement with its placeholders and their lists collapsed: a key equal for any number
    of rows or ids."""
    shape = re.sub(r"'(?:[^'\\]|\\.|'')*'", "?", sql)  # PyMySQL's statements come with their values in
    shape = re.sub(r"(?<![\w.])-?\d+(\.\d+)?(e[+-]?\d+)?\b", "?", shape)
    shape = re.sub(r"\$\d+|%s|%\(\w+\)s", "?", shape)
    shape = re.sub(r"\?(\s*,\s*\?)+", "?..", shape)
    return re.sub(r"\((\?|\?\.\.)\)(\s*,\s*\((\?|\?\.\.)\))+", "(?..)..", shape)


def _numbered(sql: str, params: Any) -> tuple[str, Any]:
    """psycopg's server-side ``$n`` placeholders as ``%s`` with the parameters in their order."""
    if not re.search(r"\$\d+", sql) or not isinstance(params, (list, tuple)):
        return sql, params
    order = [params[int(n) - 1] for n in re.findall(r"\$(\d+)", sql)]
    return re.sub(r"\$\d+", "%s", sql.replace("%", "%%")), order


def capture(url: str, pipelines: int = 10) -> dict[tuple[str, str], Any]:
    """{(kind, statement): first parameters} of the work in the module docstring, on ``url``."""
    import culm
    from culm import api
    from culm.core.state_tree import StateTrees

    caught: dict[tuple[str, str], Any] = {}
    phase = {"now": ""}
    me = threading.get_ident()

    def seen(_conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, many: bool) -> None:
        if not _norm(statement).upper().startswith(_WORDS):
            return
        kind = phase["now"] if threading.get_ident() == me else "engine"
        if not kind:
            return
        if many and isinstance(params, (list, tuple)) and params:
            params = params[0]
        text = _norm(statement)
        caught.setdefault((kind, _shape(text)), (text, params))

    import psycopg
    import pymysql.cursors

    def wrap(cls: Any, name: str, many: bool) -> Any:
        original = getattr(cls, name)

        def caught_call(self: Any, query: Any, params: Any = None, *a: Any, **kw: Any) -> Any:
            text = query
            if isinstance(text, bytes):
                text = text.decode()
            elif not isinstance(text, str) and hasattr(text, "as_string"):
                text = text.as_string(self)
            if isinstance(text, str):
                seen(None, None, text, params, None, many)
            return original(self, query, params, *a, **kw)

        return original, caught_call

    patches = [(psycopg.Cursor, "execute", False), (psycopg.Cursor, "executemany", True),
               (pymysql.cursors.Cursor, "execute", False), (pymysql.cursors.Cursor, "executemany", True)]
    saved = []
    for cls, name, many in patches:
        original, replacement = wrap(cls, name, many)
        saved.append((cls, name, original))
        setattr(cls, name, replacement)
    try:
        rt = culm.Runtime(url)
        try:
            trees = [normal_pipeline() for _ in range(pipelines)]
            phase["now"] = "run_pipeline"
            for tree in trees:
                api.run_pipeline(rt, tree)
            phase["now"] = ""
            if not rt.wait_idle(600):
                raise SystemExit("the pipelines did not finish in 600 s")
            paused = normal_pipeline()
            api.run_pipeline(rt, paused)
            api.pause_pipeline(rt, paused["id"])
            rt.wait_idle(60)
            rt.engine.state_trees = StateTrees()
            phase["now"] = "states"
            got = api.get_pipeline_states(rt, paused["id"]).data[paused["id"]]["state"]
            phase["now"] = "list"
            api.list_pipelines(rt)
            phase["now"] = ""
            if got != "SUSPENDED":
                raise SystemExit(f"the paused pipeline is {got}")
            api.revoke_pipeline(rt, paused["id"])
            rt.wait_idle(60)
        finally:
            phase["now"] = ""
            rt.close()
    finally:
        for cls, name, original in saved:
            setattr(cls, name, original)
    return caught


def _walk(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _pg_figures(plan: dict, analysed: bool) -> dict[str, Any]:
    rows, scans = 0.0, []
    for n in _walk(plan["Plan"]):
        if "Node Type" not in n:
            continue
        if "Relation Name" in n or n["Node Type"].endswith("Scan"):
            if analysed:
                rows += (n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)) * n.get("Actual Loops", 1)
            else:
                rows += n.get("Plan Rows", 0)
            rel = n.get("Relation Name") or n.get("Index Name") or ""
            scans.append(f'{n["Node Type"]}:{rel}' + (f'({n["Index Name"]})' if n.get("Index Name") and rel != n.get("Index Name") else ""))
    top = plan["Plan"]
    buffers = top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0) if analysed else None
    return {"rows": int(rows), "buffers": buffers, "scans": scans, "est": not analysed}


def _my_figures(plan: str, analysed: bool) -> dict[str, Any]:
    """Read from MariaDB's JSON plan as text (its ``attached_condition`` strings are not always
    valid JSON): per ``table_name``, the access type, key and rows (examined: r_rows x r_loops)."""
    rows, scans = 0.0, []
    for part in plan.split('"table_name": ')[1:]:
        name = part.split('"')[1]

        def field(key: str, text: str = part) -> str | None:
            found = re.search(rf'"{key}": "?([^",\n]*)', text)
            return found.group(1) if found else None

        access = field("access_type")
        if access is None:
            continue
        r_rows, r_loops = field("r_rows"), field("r_loops")
        def num(value: str | None) -> float:
            return 0.0 if value in (None, "null") else float(value)

        if analysed and r_rows is not None:
            rows += num(r_rows) * (num(r_loops) if r_loops not in (None, "null") else 1.0)
        else:
            rows += num(field("rows"))
        key = field("key")
        scans.append(f"{access}:{name}" + (f"({key})" if key else ""))
    return {"rows": int(rows), "buffers": None, "scans": scans, "est": not analysed}


def _statements(sql: str) -> list[str]:
    """A multi-statement query (culm's MySQL writes) cut at its semicolons outside quotes."""
    parts, quote, begin, i = [], "", 0, 0
    while i < len(sql):
        c = sql[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'`":
            quote = c
        elif c == ";":
            parts.append(sql[begin:i].strip())
            begin = i + 1
        i += 1
    parts.append(sql[begin:].strip())
    return [p for p in parts if p.upper().startswith(_WORDS)]  # not its BEGIN/COMMIT


def explain(url: str, caught: dict[tuple[str, str], Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The figures of every caught statement on ``url`` (see the module docstring)."""
    engine = create_engine(url)
    mysql = engine.dialect.name in ("mysql", "mariadb")
    out: dict[tuple[str, str], dict[str, Any]] = {}
    raw = engine.raw_connection()
    try:
        dbapi = raw.driver_connection
        if mysql:
            cur = dbapi.cursor()
            cur.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES,PIPES_AS_CONCAT')")
        else:
            import psycopg

            cur = psycopg.ClientCursor(dbapi)
        def one(sql: str, params: Any) -> dict[str, Any]:
            if mysql and re.match(r"INSERT INTO \S+ \([^)]*\) VALUES", sql):
                return {"rows": 0, "buffers": None, "scans": ["VALUES"], "est": True}  # reads nothing
            tries = (
                [("ANALYZE FORMAT=JSON ", True), ("EXPLAIN FORMAT=JSON ", False)]
                if mysql
                else [("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ", True), ("EXPLAIN (FORMAT JSON) ", False)]
            )
            failed: dict[str, Any] = {}
            for prefix, analysed in tries:
                try:
                    cur.execute("BEGIN")
                    cur.execute(prefix + sql, params or None)
                    got = cur.fetchone()[0]
                    cur.execute("ROLLBACK")
                except Exception as exc:  # noqa: BLE001 - a write that cannot run again: plan it only
                    dbapi.rollback()
                    failed = {"error": str(exc).splitlines()[0][:120]}
                    continue
                if mysql:
                    return _my_figures(got, analysed)
                return _pg_figures((json.loads(got) if isinstance(got, str) else got)[0], analysed)
            return failed

        for key, (text, params) in caught.items():
            sql, params = _numbered(text, params)
            parts = _statements(sql) if mysql and not params else [sql]
            figures = [one(part, params) for part in parts]
            if len(figures) == 1 or any("error" in f for f in figures):
                out[key] = next((f for f in figures if "error" in f), figures[0])
                continue
            out[key] = {
                "rows": sum(f["rows"] for f in figures),
                "buffers": None,
                "scans": [s for f in figures for s in f["scans"]],
                "est": any(f["est"] for f in figures),
            }
    finally:
        raw.close()
        engine.dispose()
    return out


def _grows(e: dict, f: dict) -> bool:
    if "rows" not in e or "rows" not in f:
        return False
    if f["rows"] > 2 * e["rows"] + 20:
        return True
    return e.get("buffers") is not None and f.get("buffers") is not None and f["buffers"] > 2 * e["buffers"] + 20


def _whole(f: dict) -> bool:
    return any(s.startswith(("Seq Scan", "ALL:")) for s in f.get("scans", []))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plans", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--empty", required=True, help="URL of an empty migrated database")
    parser.add_argument("--full", required=True, help="URL of the filled database (bench.stored)")
    parser.add_argument("--all", action="store_true", help="print every statement, not only the growing ones")
    args = parser.parse_args(argv)
    figures = {}
    for side, url in (("empty", args.empty), ("full", args.full)):
        figures[side] = explain(url, capture(url))
    keys = sorted(set(figures["empty"]) | set(figures["full"]))
    grown = 0
    for key in keys:
        e, f = figures["empty"].get(key, {}), figures["full"].get(key, {})
        bad = _grows(e, f) or _whole(f) or f.get("rows", 0) > BIG
        grown += bad
        if bad or args.all:
            print(json.dumps({"kind": key[0], "grows": bad, "empty": e, "full": f, "sql": key[1][:400]}))
    both = sum(1 for k in keys if k in figures["empty"] and k in figures["full"])
    print(json.dumps({"statements": len(keys), "on_both": both, "grow_or_scan": grown,
                      "max_full_rows": max((f.get("rows", 0) for f in figures["full"].values()), default=0)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
