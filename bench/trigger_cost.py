"""Instructions the stored-bytes triggers (revision 0010) add per payload row written, on SQLite.

``python -m bench.trigger_cost [--rows N]`` makes a culm SQLite database at the head revision,
then counts with callgrind (instructions: they do not move with the machine's load) the writes
the engine makes most, as the engine sends them, on a copy of it as it is and on a copy without
its triggers: N context rows inserted in one ``executemany`` (what ``run_pipeline`` writes), and
N execution-data rows written then replaced (what an activity's enter and its call's outcome
write). The difference per row is what a trigger firing costs: a ``culm_node`` lookup and an
upsert of the root's counter row (``culm_root_bytes``), inside SQLite.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

CONTEXT = 'INSERT INTO culm_context_value (pipeline_id, "key", type, value, code, refs) VALUES (?,?,?,?,NULL,?)'
EXECUTION = ("INSERT INTO culm_execution_data (node_id, inputs, outputs) VALUES (?,?,?) ON CONFLICT (node_id) "
             "DO UPDATE SET inputs = excluded.inputs, outputs = excluded.outputs")
CASES = ("context", "execution")


def _writes(db: Path, case: str, rows: int) -> None:
    """The measured writes (in the valgrind child), inside ``itertools.starmap``, which
    callgrind counts; the nodes they name are written first, uncounted, as the engine does."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO culm_node (id, root_id, pipeline_id, type) VALUES (?, 'r', 'r', 'x')",
                     [(f"n{i}",) for i in range(rows)])

    def write() -> None:
        if case == "context":
            conn.executemany(CONTEXT, [(f"n{i}", "${k}", "plain", '"v"', "[]") for i in range(rows)])
            return
        for outputs in ("{}", '{"_result": true, "_loop": 1, "_inner_loop": 1}'):
            for i in range(rows):
                conn.execute(EXECUTION, (f"n{i}", '{"a": 1}', outputs))

    list(itertools.starmap(write, [()]))
    conn.execute("COMMIT")
    conn.close()


def _count(db: Path, case: str, rows: int) -> int:
    """Instructions of ``_writes`` on ``db``, counted by callgrind."""
    out = db.with_suffix(f".{case}.cg")
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=starmap_next",
         f"--callgrind-out-file={out}", sys.executable, "-m", "bench.trigger_cost", "--inside", str(db), case,
         "--rows", str(rows)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    total = re.search(r"^(?:totals|summary): (\d+)", out.read_text(errors="replace"), re.M) if out.exists() else None
    if proc.returncode != 0 or total is None:
        raise SystemExit(f"callgrind run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return int(total.group(1))


def measure(rows: int) -> dict[str, float]:
    """Instructions per row written, with and without the triggers, by case."""
    import culm

    work = Path(tempfile.mkdtemp(prefix="culm-bench-triggers-"))
    try:
        culm.Runtime(f"sqlite:///{work}/head.db", workers=0).close()
        result: dict[str, float] = {}
        for triggers in (True, False):
            for case in CASES:
                db = work / f"{case}-{triggers}.db"
                shutil.copy(work / "head.db", db)
                if not triggers:
                    with sqlite3.connect(db) as conn:
                        names = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
                        for (name,) in names:
                            conn.execute(f"DROP TRIGGER {name}")
                writes = rows * (1 if case == "context" else 2)
                key = f"{case}_{'with' if triggers else 'without'}_triggers_instr_per_row"
                result[key] = round(_count(db, case, rows) / writes)
        for case in CASES:
            result[f"{case}_trigger_instr_per_row"] = (result[f"{case}_with_triggers_instr_per_row"]
                                                       - result[f"{case}_without_triggers_instr_per_row"])
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trigger_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500, help="rows per case (default 500)")
    parser.add_argument("--inside", nargs=2, metavar=("DB", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        _writes(Path(args.inside[0]), args.inside[1], args.rows)
        return 0
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed")
    print(json.dumps({"rows": args.rows, **measure(args.rows)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
