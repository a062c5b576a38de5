"""Interleaved A/B runs of one benchmark spec: ``python -m bench.ab OTHER NAME [--rounds 4]``.

This machine's speed drifts by tens of per cent from one hour to the next, so two figures taken
minutes apart prove nothing about a change. This runs ``python -m bench.one NAME`` alternately
from ``OTHER`` (another checkout, e.g. ``git worktree add /tmp/base <commit>``) and from this
checkout, each in a fresh process with that checkout first on ``sys.path``, and prints every
pair and then the median of each side's medians. Compare sides only within one such run.

``--bench-here``: both sides run this checkout's ``bench`` package (a spec the other checkout does
not have, e.g. ``polled_batch_10ms``) against their own ``culm``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]


def run_one(checkout: Path, name: str, repeats: int | None, quick: bool) -> dict[str, Any]:
    """One ``python -m bench.one`` run with ``checkout``'s code; its JSON line."""
    args = [sys.executable, "-m", "bench.one", name]
    if repeats is not None:
        args += ["--repeats", str(repeats)]
    if quick:
        args.append("--quick")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(checkout), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run(args, cwd=checkout, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"bench.one {name} failed in {checkout} (exit {proc.returncode}):\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if "median_s" not in result:  # skipped, or not every pipeline finished: say why, and where
        raise SystemExit(f"bench.one {name} in {checkout} measured nothing: {lines[-1][:2000]}")
    return result


def _with_this_bench(checkout: Path, scratch: Path) -> Path:
    """A directory holding ``checkout``'s culm and this checkout's bench (as symlinks)."""
    place = scratch / checkout.name
    place.mkdir()
    (place / "culm").symlink_to(checkout / "culm")
    (place / "bench").symlink_to(HERE / "bench")
    return place


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other checkout (A); this one is B")
    parser.add_argument("name", help="a spec name, e.g. batch, scale_chain_10000, distributed_batch_w2")
    parser.add_argument("--rounds", type=int, default=4, help="pairs to run (default 4)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per run (bench.one's default: 3)")
    parser.add_argument("--quick", action="store_true", help="smoke sizes (tests)")
    parser.add_argument("--bench-here", action="store_true", help="run this checkout's bench on both sides")
    args = parser.parse_args(argv)
    other = args.other.resolve()
    if not (other / "bench" / "one.py").is_file():
        parser.error(f"{other} is not a checkout of this project (no bench/one.py)")
    sides = {"A": other, "B": HERE}
    if args.bench_here:
        scratch = Path(tempfile.mkdtemp(prefix="culm-ab-"))
        sides = {"A": _with_this_bench(other, scratch), "B": HERE}
    medians: dict[str, list[float]] = {"A": [], "B": []}
    idle: dict[str, list[float]] = {"A": [], "B": []}  # polled specs: the same trees on wait_idle
    print(f"A = {other}\nB = {HERE}\nspec {args.name}, {args.rounds} rounds", flush=True)
    for i in range(1, args.rounds + 1):
        row = []
        for side, checkout in sides.items():
            res = run_one(checkout, args.name, args.repeats, args.quick)
            medians[side].append(res["median_s"])
            row.append(f"{side} median {res['median_s']:.4f} s (min {res['min_s']:.4f})")
            if res.get("wait_idle_median_s") is not None:
                idle[side].append(res["wait_idle_median_s"])
                row[-1] += f", wait_idle {res['wait_idle_median_s']:.4f} s"
        print(f"round {i}: " + "; ".join(row), flush=True)
    a, b = statistics.median(medians["A"]), statistics.median(medians["B"])
    better = sum(1 for x, y in zip(medians["A"], medians["B"], strict=True) if y < x)
    print(json.dumps({"spec": args.name, "rounds": args.rounds, "A_median_of_medians_s": a,
                      "B_median_of_medians_s": b, "B_over_A": round(b / a, 3) if a else None,
                      "rounds_B_faster": better,
                      **({f"{side}_wait_idle_median_of_medians_s": statistics.median(v) for side, v in idle.items() if v})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
