"""cProfile of the embedded batch scenario: ``python -m bench.profile [--pipelines 100] [--top 20]``.

The embedded runtime works on three kinds of thread: the caller (``api.run_pipeline``: validate,
compile, insert), the engine thread (every engine step, one transaction per batch) and the user-code
pool (the no-op component). cProfile only sees the thread it is enabled on, so this wraps the
engine thread's loop and the pool's work items with their own profilers (a monkeypatch made here,
for the profile only) and prints the top functions of each.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import tempfile
import threading
import time
from typing import Any

from bench.scenarios import submit_and_wait, verify
from bench.trees import normal_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--pipelines", type=int, default=100)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--sort", default="tottime", choices=["tottime", "cumulative"])
    args = parser.parse_args(argv)

    import culm
    from culm.dispatch import threads

    engine_prof = cProfile.Profile()
    pool_profs: list[cProfile.Profile] = []
    pool_lock = threading.Lock()
    original_loop = threads.ThreadDispatcher._engine_loop
    original_submit = threads._UserCodePool.submit

    def profiled_loop(self: Any) -> None:
        engine_prof.enable()
        try:
            original_loop(self)
        finally:
            engine_prof.disable()

    def profiled_submit(self: Any, item: Any, call: Any) -> None:
        def run() -> Any:
            prof = cProfile.Profile()
            prof.enable()
            try:
                return call()
            finally:
                prof.disable()
                with pool_lock:
                    pool_profs.append(prof)
        original_submit(self, item, run)

    threads.ThreadDispatcher._engine_loop = profiled_loop  # type: ignore[method-assign]
    threads._UserCodePool.submit = profiled_submit  # type: ignore[method-assign]

    trees = [normal_pipeline() for _ in range(args.pipelines)]
    workdir = tempfile.mkdtemp(prefix="culm-bench-prof-")
    rt = culm.Runtime(f"sqlite:///{workdir}/bench.db")
    caller_prof = cProfile.Profile()
    try:
        caller_prof.enable()
        t0 = time.perf_counter()
        elapsed = submit_and_wait(rt, trees)
        caller_prof.disable()
        verify(rt, trees)
    finally:
        rt.close()
        shutil.rmtree(workdir, ignore_errors=True)
        threads.ThreadDispatcher._engine_loop = original_loop  # type: ignore[method-assign]
        threads._UserCodePool.submit = original_submit  # type: ignore[method-assign]
    del t0
    print(f"{args.pipelines} x normal_pipeline(): {elapsed:.3f}s under the profiler "
          f"({args.pipelines * 17 / elapsed:,.0f} nodes/s; profiling slows it down)\n")
    for title, profs in (("caller thread (run_pipeline + waiting)", [caller_prof]),
                         ("engine thread", [engine_prof]),
                         (f"user-code pool ({len(pool_profs)} work items)", pool_profs)):
        if not profs:
            continue
        out = io.StringIO()
        stats = pstats.Stats(profs[0], stream=out)
        for p in profs[1:]:
            stats.add(p)
        stats.sort_stats(args.sort).print_stats(args.top)
        print(f"==== {title} ====")
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
