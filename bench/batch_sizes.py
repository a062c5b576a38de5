"""The engine's batches of the embedded batch on real threads: ``python -m bench.batch_sizes``.

Counts every batch ``ThreadDispatcher._run_batch`` commits while 100 x ``normal_pipeline()`` run
(submitted from this thread, then ``wait_idle``), and prints how many, the most common sizes and
the first 60 as (items, calls waiting for a slot, calls in flight, results of user code held).
Under valgrind (``bench.instructions``) the threads take turns on one core and batches form
differently; this is the count on a real machine, which moves with its load.
"""

from __future__ import annotations

import collections
import shutil
import tempfile
from typing import Any

import culm
from bench.scenarios import submit_and_wait, verify
from bench.trees import normal_pipeline
from culm.dispatch import threads


def main() -> int:
    sizes: list[tuple[int, int, int, int]] = []
    run_batch = threads.ThreadDispatcher._run_batch

    def counted(self: Any, batch: Any) -> None:
        sizes.append((len(batch), len(self._calls), self._in_flight, sum(1 for i in batch if i.waiting)))
        run_batch(self, batch)

    threads.ThreadDispatcher._run_batch = counted  # type: ignore[method-assign]
    trees = [normal_pipeline() for _ in range(100)]
    workdir = tempfile.mkdtemp(prefix="culm-bench-sizes-")
    rt = culm.Runtime(f"sqlite:///{workdir}/bench.db")
    try:
        elapsed = submit_and_wait(rt, trees)
        verify(rt, trees)
    finally:
        rt.close()
        shutil.rmtree(workdir, ignore_errors=True)
        threads.ThreadDispatcher._run_batch = run_batch  # type: ignore[method-assign]
    print(f"{elapsed:.3f} s, batches={len(sizes)}")
    print("most common sizes:", collections.Counter(s[0] for s in sizes).most_common(15))
    print("first 60 (items, calls waiting, in flight, results):", sizes[:60])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
