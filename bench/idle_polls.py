"""Thread CPU of one idle ``get_pipeline_states`` poll: ``python -m bench.idle_polls``.

An *idle* poll finds the change feed where the previous poll of that pipeline left it (a poller
of a running batch makes ~90 % of its polls so: docs/performance.md, "Observing cost"). Runs the
shape on an embedded SQLite runtime until it stands still (RUNNING, every branch waiting for a
callback), then times ``--rounds`` rounds of polls with ``time.thread_time_ns()`` on the polling
thread (the engine's threads are not counted) and prints the min and median per poll.

Shapes: ``waiting_20``: 100 pipelines of 4 branches waiting for a callback (20 nodes; 100
polls a round, each pipeline in turn); ``waiting_703``: one pipeline of 100 such branches of 10
(703 entries, 101 wait reasons; 100 polls a round); ``finished_1004``: ``wide_pipeline(100, 10)``
once FINISHED (1,005 entries, no wait reason: the issue's "1,004-node pipeline at idle").
``--long-wait``: as after a wait longer than
``STALLED_AFTER`` (set to 0.05 s here), when every poll makes the stalled check.

``--culm CHECKOUT`` times another checkout's culm (a worktree of main, for a before and after);
run the two in turn, several times: thread CPU moves with the machine's load less than wall
time does, but it moves.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

SHAPES = ("waiting_20", "waiting_703", "finished_1004")
FINAL = {"finished_1004": "FINISHED"}  # (the others stand still RUNNING)
POLLS = 100  # per round


def measure(shape: str, rounds: int, long_wait: bool) -> dict[str, object]:
    import gc

    import culm
    from bench.trees import waiting_pipeline, wide_pipeline
    from culm import api

    if long_wait:  # (before the first poll: a kept tree's reasons remember when the check is due)
        from culm.core import waits

        waits.STALLED_AFTER = 0.05
    trees = ([waiting_pipeline(4, 4) for _ in range(100)] if shape == "waiting_20"
             else [wide_pipeline(100, 10)] if shape == "finished_1004" else [waiting_pipeline(100, 10)])
    final = FINAL.get(shape, "RUNNING")
    workdir = tempfile.mkdtemp(prefix="culm-bench-idle-")
    rt = culm.Runtime(f"sqlite:///{workdir}/bench.db")
    try:
        for tree in trees:
            api.run_pipeline(rt, tree)
        if not rt.wait_idle(600):
            raise SystemExit("the pipelines did not stand still in 600 s")
        ids = [t["id"] for t in trees]
        for root in ids:  # (one uncounted poll each: the trees are kept from here on)
            if api.get_pipeline_states(rt, root).data[root]["state"] != final:
                raise SystemExit(f"pipeline {root} is not {final}")
        if long_wait:
            time.sleep(0.2)
        per_poll = []
        for _ in range(rounds):
            gc.collect()
            start = time.thread_time_ns()
            for i in range(POLLS):
                api.get_pipeline_states(rt, ids[i % len(ids)])
            per_poll.append((time.thread_time_ns() - start) / POLLS / 1e6)
    finally:
        rt.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"shape": shape, "long_wait": long_wait, "culm": culm.__file__,
            "ms_per_poll_min": round(min(per_poll), 4), "ms_per_poll_median": round(statistics.median(per_poll), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_polls", description=__doc__.splitlines()[0])
    parser.add_argument("shape", nargs="?", choices=SHAPES, default="waiting_20")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of 100 polls timed (default 7)")
    parser.add_argument("--long-wait", action="store_true", help="poll as after a wait over STALLED_AFTER")
    parser.add_argument("--culm", type=Path, default=None, help="time this checkout's culm (default: this one)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    if args.culm is not None:
        checkout = args.culm.resolve()
        if not (checkout / "culm" / "__init__.py").is_file():
            parser.error(f"{checkout} is not a checkout of culm (no culm/__init__.py)")
        if "culm" in sys.modules:
            parser.error("culm was imported before --culm could take effect")
        sys.path.insert(0, str(checkout))
    print(json.dumps(measure(args.shape, args.rounds, args.long_wait)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
