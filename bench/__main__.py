"""``python -m bench``: culm's benchmark.

    python -m bench                          # every embedded scenario + distributed (if reachable)
    python -m bench --scenario batch         # batch | big | chain | latency | scale | distributed | all
    python -m bench --scenario polled        # submit, then poll get_pipeline_states (bench/polled.py)
    python -m bench --scenario polled_distributed   # the same with 2 culm workers, PostgreSQL/MariaDB
    python -m bench --quick --scenario big   # smoke sizes, 1 repeat (the test suite runs this)

Prints one JSON line per scenario on stdout (``{"scenario", "nodes", "median_s", "min_s", "max_s",
"nodes_per_s", "peak_rss_mb", "repeats", "backend", ...}``), then a readable table (unless
``--json-only``). Each scenario runs in a fresh ``python -m bench.one`` subprocess, each repeat on
a fresh SQLite file (or, distributed, a fresh PostgreSQL database and fresh ``culm worker``
processes). Progress goes to stderr. Exit status 1 if any scenario failed (a skip is not a failure).

Environment: ``CULM_BENCH_PG`` (admin URL, default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``),
``CULM_BENCH_REDIS`` (default ``redis://127.0.0.1:6379/0``), ``CULM_BENCH_WORKER_CONCURRENCY`` (pool
processes per worker, default 1), ``CULM_BENCH_TIMEOUT`` (seconds a run may take, default 900).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.scenarios import REPO, catalogue

SCENARIOS = ["batch", "big", "chain", "latency", "scale", "distributed", "polled", "polled_distributed", "all"]


def run_one(name: str, quick: bool, repeats: int | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.one", name]
    if quick:
        cmd.append("--quick")
    if repeats:
        cmd += ["--repeats", str(repeats)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if lines:
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
    tail = (proc.stderr or proc.stdout or "")[-1500:].strip()
    return {"scenario": name, "ok": False, "error": f"bench.one exited with {proc.returncode}: {tail}"}


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def table(results: list[dict[str, Any]]) -> str:
    head = ["scenario", "nodes", "median", "min", "max", "nodes/s", "peak RSS MB", "reps", "backend"]
    rows = []
    for r in results:
        if r.get("skipped") or r.get("error"):
            status = "skipped: " + r["skipped"] if r.get("skipped") else "FAILED: " + r["error"].splitlines()[0]
            rows.append([r["scenario"], "", "", "", "", "", "", "", status[:110]])
            continue
        ms = r["scenario"] == "latency"
        t = (lambda s: f"{s * 1000:.1f} ms") if ms else (lambda s: f"{s:.3f} s")
        rss = _fmt(r.get("peak_rss_mb"), ".0f")
        if r.get("worker_peak_rss_mb") is not None:
            rss += f" (worker {r['worker_peak_rss_mb']:.0f})"
        rows.append([r["scenario"], str(r["nodes"]), t(r["median_s"]), t(r["min_s"]), t(r["max_s"]),
                     _fmt(r.get("nodes_per_s"), ",.0f"), rss, str(r["repeats"]), r["backend"]])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    out = [" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
           "-+-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="culm benchmark")
    parser.add_argument("--scenario", default="all", choices=SCENARIOS)
    parser.add_argument("--repeats", type=int, default=None, help="repeats per scenario (at least 3 unless --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke sizes and 1 repeat")
    parser.add_argument("--json-only", action="store_true", help="no table, only the JSON lines")
    args = parser.parse_args(argv)

    specs = catalogue(args.scenario, args.quick, args.repeats)
    results = []
    for spec in specs:
        started = time.monotonic()
        print(f"bench: {spec.name} ({spec.shape}, {spec.repeats} repeats) ...", file=sys.stderr, flush=True)
        result = run_one(spec.name, args.quick, args.repeats)
        print(f"bench: {spec.name} done in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
        print(json.dumps(result), flush=True)
        results.append(result)
    if not args.json_only:
        print()
        print(table(results))
    return 1 if any(r.get("ok") is False for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
