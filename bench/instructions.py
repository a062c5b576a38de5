"""Instructions one embedded run costs, per thread, counted with callgrind.

``python -m bench.instructions [batch|big|latency|states_big|states_small|states_waiting|states_moving|states_big_moving|states_big_dropped|states_waiting_dropped] [--poll MS]`` runs itself under
``valgrind --tool=callgrind`` and prints the instructions executed by the caller (the
``run_pipeline`` calls, and the polling loop with ``--poll``), the engine thread and the user-code
threads, and the engine's batches. Wall time on this machine moves with everybody's load;
instruction counts do not (they repeat within a few per cent: batches form a little differently
from run to run). ``--culm /other/checkout`` counts another checkout's ``culm`` with this
``bench`` (an A/B: ``git worktree add /tmp/base <commit>``). ``CULM_BENCH_DB=URL`` runs the shapes
on that database instead of a new one (e.g. a copy of what ``python -m bench.stored`` filled).

How: each measured stretch runs inside a C iterator callgrind can toggle on (the caller inside
``itertools.starmap``, each engine batch inside ``itertools.dropwhile``, each user-code call inside
``itertools.takewhile``; culm uses none of them), with ``--separate-threads=yes``. Under valgrind
the threads take turns on one core, so batches are larger than on a real machine; compare counts
only with counts.
"""

from __future__ import annotations

import argparse
import collections
import gc
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.trees import normal_pipeline, waiting_pipeline, wide_pipeline

HERE = Path(__file__).resolve().parents[1]
SHAPES = {
    "batch": lambda: [normal_pipeline() for _ in range(100)],
    "big": lambda: [wide_pipeline(100, 10)],
    "latency": lambda: [normal_pipeline()],
}
READS = {"states_big": 100, "states_small": 2000, "states_waiting": 100,  # get_pipeline_states calls counted
         "states_moving": 300, "states_big_moving": 9, "states_big_dropped": 100, "states_waiting_dropped": 100}
# Read shapes whose caller drops each result before the next call, as a polling loop does (the
# others keep every result until the last call: the garbage collector then scans them all).
DROPPED = {"states_big_dropped": "states_big", "states_waiting_dropped": "states_waiting"}
# states_moving / states_big_moving: rounds of callbacks (each followed by one counted poll of
# every pipeline), and callbacks per pipeline in a round.
MOVES = {"states_moving": (3, 1), "states_big_moving": (9, 10)}
MARKS = {"starmap_next": "caller", "dropwhile_next": "engine", "takewhile_next": "user code"}


def _inside(shape: str, poll_ms: float | None) -> dict[str, Any]:
    """The measured run (in the valgrind child)."""
    import culm
    from culm import api
    from culm.dispatch import threads

    batches, reads = [0], [0]
    measuring = [False]
    run_batch, pool_submit = threads.ThreadDispatcher._run_batch, threads._UserCodePool.submit

    def counted_batch(self: Any, batch: Any) -> None:
        if not measuring[0]:
            return run_batch(self, batch)
        batches[0] += 1
        list(itertools.dropwhile(lambda _: run_batch(self, batch), [0]))

    def counted_submit(self: Any, item: Any, call: Any) -> None:
        def counted() -> Any:
            out: list[Any] = []
            list(itertools.takewhile(lambda _: out.append(call()), [0]))
            return out[0]
        pool_submit(self, item, counted if measuring[0] else call)

    threads.ThreadDispatcher._run_batch = counted_batch  # type: ignore[method-assign]
    threads._UserCodePool.submit = counted_submit  # type: ignore[method-assign]

    if shape in READS:
        return _reads(shape)
    trees = SHAPES[shape]()
    workdir = tempfile.mkdtemp(prefix="culm-bench-instr-")
    # $CULM_BENCH_DB: count on that database instead of a new one (e.g. one bench.stored filled).
    rt = culm.Runtime(os.environ.get("CULM_BENCH_DB") or f"sqlite:///{workdir}/bench.db")
    try:
        api.run_pipeline(rt, normal_pipeline())  # warm-up, not counted: first-call costs
        if not rt.wait_idle(600):
            raise SystemExit("the warm-up run did not end in 600 s")
        ids = [t["id"] for t in trees]
        measuring[0] = True

        def submit(tree: dict[str, Any]) -> None:
            api.run_pipeline(rt, tree)

        def poll(_: int) -> None:
            pending = list(ids)
            while pending:
                time.sleep(poll_ms / 1000)  # type: ignore[operator]
                reads[0] += len(pending)
                pending = [r for r in pending
                           if api.get_pipeline_states(rt, r).data.get(r, {}).get("state") != "FINISHED"]

        list(itertools.starmap(submit, ((t,) for t in trees)))
        if poll_ms is not None:
            list(itertools.starmap(poll, [(0,)]))
        if not rt.wait_idle(600):
            raise SystemExit("the run did not end in 600 s")
        states = {r: api.get_pipeline_states(rt, r).data[r]["state"] for r in ids}
        if set(states.values()) != {"FINISHED"}:
            raise SystemExit(f"not every pipeline FINISHED: {_unfinished(rt, states)}")
    finally:
        rt.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"batches": batches[0], **({"polls": reads[0]} if poll_ms is not None else {})}


def _unfinished(rt: Any, states: dict[str, str]) -> dict[str, Any]:
    """The pipelines not FINISHED, each with its nodes not FINISHED and their ex_data (a node that
    FAILED leaves its pipeline RUNNING: the reason says whether the engine or the node stopped)."""
    from culm import api

    out: dict[str, Any] = {}
    for root, state in states.items():
        if state == "FINISHED":
            continue
        nodes = {}
        for node_id, entry in api.get_pipeline_states(rt, root).data[root]["children"].items():
            if entry["state"] != "FINISHED":
                ex = api.get_execution_data_outputs(rt, node_id).data.get("ex_data") if entry["state"] == "FAILED" else None
                nodes[node_id] = entry["state"] if ex is None else f"{entry['state']}: {str(ex)[:300]}"
        out[root] = {"state": state, "nodes": nodes}
    return out


def _reads(shape: str) -> dict[str, Any]:
    """``get_pipeline_states`` at idle, counted as the caller's: 100 calls on a finished 1,004-node
    pipeline (``states_big``), 2,000 calls over 100 finished 17-node pipelines in turn
    (``states_small``), or 100 calls on a RUNNING 1,004-node pipeline whose 100 branches each
    wait for a callback halfway (``states_waiting``: 100 wait reasons, 101 live processes), after
    one uncounted call each. ``states_moving``: what a poller of running pipelines reads, made
    repeatable: 100 pipelines of 4 branches that each wait for a callback (``waiting_pipeline(4,
    4)``, 20 nodes), polled once each; then MOVES times, one branch of each is called back (its
    last nodes run, it reaches the converge gateway; uncounted) and every pipeline is polled once
    more (300 counted calls, each catching up with ~4 changed nodes and reading the wait facts of
    a pipeline still RUNNING). ``states_big_moving``: the same on ``waiting_pipeline(100, 10)``
    (1,004 nodes), 10 branches called back per round, 9 rounds: each counted poll catches up
    with ~40 changed nodes of the big pipeline as the engine left them (9 counted calls).
    ``states_big_dropped``, ``states_waiting_dropped``: ``states_big``, ``states_waiting`` with
    each result dropped before the next call (a polling loop's pattern; the others keep all 100)."""
    import culm
    from culm import api

    dropped = shape in DROPPED
    shape = DROPPED.get(shape, shape)
    workdir = tempfile.mkdtemp(prefix="culm-bench-instr-")
    rt = culm.Runtime(f"sqlite:///{workdir}/bench.db")
    try:
        shapes = {"states_big": lambda: [wide_pipeline(100, 10)], "states_waiting": lambda: [waiting_pipeline(100, 10)],
                  "states_moving": lambda: [waiting_pipeline(4, 4) for _ in range(100)],
                  "states_big_moving": lambda: [waiting_pipeline(100, 10)]}
        trees = shapes.get(shape, lambda: [normal_pipeline() for _ in range(100)])()
        final = "RUNNING" if shape in ("states_waiting", *MOVES) else "FINISHED"
        for tree in trees:
            api.run_pipeline(rt, tree)
        if not rt.wait_idle(600):
            raise SystemExit("the run did not end in 600 s")
        ids = [t["id"] for t in trees]
        for root in ids:
            if api.get_pipeline_states(rt, root).data[root]["state"] != final:
                raise SystemExit(f"pipeline {root} is not {final}")
        if shape in MOVES:
            _moving(rt, ids, *MOVES[shape])
            return {"calls": READS[shape]}
        calls = [(ids[i % len(ids)],) for i in range(READS[shape])]
        gc.collect()  # see _moving
        results = itertools.starmap(lambda root: api.get_pipeline_states(rt, root), calls)
        if dropped:
            collections.deque(results, maxlen=0)
        else:
            list(results)
    finally:
        rt.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"calls": READS[shape]}


def _moving(rt: Any, ids: list[str], rounds: int, per_pipeline: int) -> None:
    """``states_moving``, ``states_big_moving``: ``rounds`` rounds of ``per_pipeline`` callbacks
    per pipeline (uncounted), each followed by one counted ``get_pipeline_states`` of every pipeline."""
    from culm import api

    for _ in range(rounds):
        called = []  # first every pipeline's next waiting nodes, then the callbacks: the counted
        for root in ids:  # polls below find exactly the changes the callbacks made
            entries = api.get_pipeline_states(rt, root).data[root]["children"].values()
            waiting = sorted((e for e in entries if (e["wait_reason"] or {}).get("kind") == "callback"),
                             key=lambda e: e["id"])
            called.extend(waiting[:per_pipeline])
        for node in called:
            if not api.callback(rt, node["id"], node["version"], {}).result:
                raise SystemExit(f"the callback of node {node['id']} was refused")
        if not rt.wait_idle(600):
            raise SystemExit("the callbacks did not end in 600 s")
        # A full collection (tens of millions of instructions with a runtime's heap) lands in a
        # counted stretch or not depending on what ran before: start each from the same place.
        gc.collect()
        list(itertools.starmap(lambda root: api.get_pipeline_states(rt, root), [(root,) for root in ids]))


def _count(path: Path) -> tuple[str | None, int]:
    """(which thread, instructions) of one per-thread callgrind output file."""
    text = path.read_text(errors="replace")
    total = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
    # Names are compressed across the files of one run: a thread's file may name its mark only
    # where it is called (cfn=).
    role = next((r for mark, r in MARKS.items() if re.search(rf"^c?fn=\(\d+\) {mark}$", text, re.M)), None)
    return role, int(total.group(1)) if total else 0


def measure(shape: str, poll_ms: float | None, checkout: Path, keep: Path | None = None) -> dict[str, Any]:
    """Run the shape under callgrind with ``checkout``'s culm; instructions per thread role
    (millions) and batches."""
    out = Path(tempfile.mkdtemp(prefix="culm-callgrind-"))
    # The child imports culm and bench from its working directory: checkout's culm, this bench.
    (out / "culm").symlink_to(checkout / "culm")
    (out / "bench").symlink_to(HERE / "bench")
    args = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--separate-threads=yes",
            *(f"--toggle-collect={m}" for m in MARKS), f"--callgrind-out-file={out}/cg.out",
            sys.executable, "-m", "bench.instructions", shape, "--inside"]
    if poll_ms is not None:
        args += ["--poll", str(poll_ms)]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, cwd=out)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"callgrind run failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-3000:]}")
        result: dict[str, Any] = {"shape": shape, "poll_ms": poll_ms, **json.loads(lines[-1])}
        roles: dict[str, int] = {r: 0 for r in MARKS.values()}
        for path in out.glob("cg.out-*"):
            role, count = _count(path)
            if role is not None:
                roles[role] += count
        result.update({f"{r.replace(' ', '_')}_Minstr": round(n / 1e6, 1) for r, n in roles.items()})
        result["total_Minstr"] = round(sum(roles.values()) / 1e6, 1)
        if keep is not None:  # for callgrind_annotate / kcachegrind
            kept = Path(tempfile.mkdtemp(prefix=f"{shape}-", dir=keep))
            for path in out.glob("cg.out-*"):
                shutil.copy(path, kept)
            result["kept"] = str(kept)
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("shape", nargs="?", default="batch", choices=sorted([*SHAPES, *READS]))
    parser.add_argument("--poll", type=float, default=None, metavar="MS",
                        help="after submitting, poll get_pipeline_states every MS ms (counted as the caller's)")
    parser.add_argument("--runs", type=int, default=1, help="callgrind runs (one JSON line each)")
    parser.add_argument("--culm", type=Path, default=HERE, metavar="CHECKOUT",
                        help="count this checkout's culm (default: this one)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep the per-thread callgrind files in a new directory under DIR")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        print(json.dumps(_inside(args.shape, args.poll)), flush=True)
        return 0
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed")
    checkout = args.culm.resolve()
    if not (checkout / "culm" / "__init__.py").is_file():
        parser.error(f"{checkout} is not a checkout of culm (no culm/__init__.py)")
    for _ in range(args.runs):
        print(json.dumps({"culm": str(checkout), **measure(args.shape, args.poll, checkout, args.keep)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
