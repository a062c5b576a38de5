"""Rows and bytes the first ``culm list`` of a process reads from the database.

Fills a SQLite file (or ``--db URL``) with ``--pipelines`` runs (default 1,000) of a tree of one
failing activity followed by ``--pad`` activities it never reaches (default 60), so that each
pipeline stays RUNNING with one FAILED node (a list names it), then runs ``culm list`` (and
``culm list --json``) in a new process and counts what its queries returned: rows, and bytes of
their text and binary values. Load-independent: the counts do not move with the machine's load.

    python -m bench.list_reads [--db URL] [--pipelines 1000] [--pad 60]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

COMPONENT = "bench_list_reads_fail"


def _register() -> None:
    from culm.components import Component, Service

    class Fails(Service):
        def execute(self, data: Any, parent_data: Any) -> bool:
            data.outputs.ex_data = "failed on purpose"
            return False

    class FailsComponent(Component):
        code = COMPONENT
        name = "fails"
        bound_service = Fails


def fill(url: str, count: int, pad: int) -> None:
    """``count`` runs, each held RUNNING by its FAILED first activity."""
    import culm
    from culm import api
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree

    _register()
    roots = []
    with culm.Runtime(url) as rt:
        for _ in range(count):
            start = EmptyStartEvent(name="start")
            node = start.extend(ServiceActivity(component_code=COMPONENT, name="charge the card"))
            for i in range(pad):
                node = node.extend(ServiceActivity(component_code=COMPONENT, name=f"step {i} of the order"))
            node.extend(EmptyEndEvent(name="end"))
            tree = build_tree(start)
            assert api.run_pipeline(rt, tree).result
            roots.append(tree["id"])
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            listed = api.list_pipelines(rt, limit=1000).data
            marked = [i for i in listed["items"] if i["state"] == "RUNNING"]
            with rt.store.reading() as unit:
                if len(unit.failed_nodes([i["id"] for i in marked], 1)) == count:
                    return
            time.sleep(0.2)
    raise SystemExit("the runs did not all fail within 600 s")


def counted(url: str, argv: list[str]) -> dict[str, int]:
    """Run ``culm`` with ``argv`` in this process, counting the rows and bytes its queries return."""
    from culm.cli import main
    from culm.storage.sql.base import SqlUnit

    seen = {"queries": 0, "rows": 0, "bytes": 0}

    class Counting:
        def __init__(self, cur: Any) -> None:
            self._cur = cur

        def _count(self, rows: list[Any]) -> list[Any]:
            seen["rows"] += len(rows)
            seen["bytes"] += sum(len(v) for row in rows for v in row if isinstance(v, str | bytes | bytearray | memoryview))
            return rows

        def fetchall(self) -> list[Any]:
            return self._count(list(self._cur.fetchall()))

        def fetchone(self) -> Any:
            row = self._cur.fetchone()
            if row is not None:
                self._count([row])
            return row

        def __getattr__(self, name: str) -> Any:
            return getattr(self._cur, name)

    original = SqlUnit._x

    def _x(self: Any, sql: str, params: Any = ()) -> Any:
        seen["queries"] += 1
        return Counting(original(self, sql, params))

    SqlUnit._x = _x  # type: ignore[method-assign]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = main([*argv, "--db", url])
    finally:
        SqlUnit._x = original  # type: ignore[method-assign]
    assert code == 0, out.getvalue()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db")
    parser.add_argument("--pipelines", type=int, default=1000)
    parser.add_argument("--pad", type=int, default=60)
    parser.add_argument("--count", help=argparse.SUPPRESS)  # internal: count in this process
    args = parser.parse_args()
    if args.count is not None:
        print(json.dumps(counted(args.db, args.count.split())))
        return
    folder = tempfile.mkdtemp(prefix="culm-list-reads-")
    url = args.db or f"sqlite:///{Path(folder) / 'list.db'}"
    fill(url, args.pipelines, args.pad)
    for argv in (["list"], ["list", "--json"]):
        # A new process each: its first list, with nothing kept from an earlier one.
        done = subprocess.run([sys.executable, "-m", "bench.list_reads", "--db", url, "--count", " ".join(argv)],
                              capture_output=True, text=True, check=True)
        print(f"culm {' '.join(argv)} over {args.pipelines} pipelines: {done.stdout.strip()}")


if __name__ == "__main__":
    main()
