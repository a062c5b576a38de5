"""Thread CPU time of ``validate_tree`` on a tree of many subprocesses.

    python -m bench.validate_subprocesses [CHECKOUT]

CHECKOUT: a checkout whose culm is imported instead of this one's (for an interleaved A/B run:
``python -m bench.validate_subprocesses /work/main; python -m bench.validate_subprocesses``).
The tree: 200 subprocesses in a row, each with 10 data inputs and 5 params, and 50 data inputs of
its own. Printed: the minimum over 7 rounds of the mean of 20 calls, in ms.
"""

from __future__ import annotations

import sys
import time
from typing import Any


def main() -> None:
    if len(sys.argv) > 1:
        sys.path.insert(0, sys.argv[1])
    from culm import builder as bd
    from culm.model.validator import validate_tree

    start = bd.EmptyStartEvent()
    cur: Any = start
    for _ in range(200):
        inner = bd.EmptyStartEvent()
        inner.extend(bd.ServiceActivity(component_code="example_component")).extend(bd.EmptyEndEvent())
        cur = cur.extend(bd.SubProcess(
            start=inner, data=bd.Data(inputs={f"${{k{j}}}": bd.Var(type=bd.Var.PLAIN, value=j) for j in range(10)}),
            params=bd.Params({f"${{k{j}}}": bd.Var(type=bd.Var.PLAIN, value=j) for j in range(5)})))
    cur.extend(bd.EmptyEndEvent())
    tree = bd.build_tree(start, data=bd.Data(inputs={f"${{p{j}}}": bd.Var(type=bd.Var.PLAIN, value=j) for j in range(50)}))
    assert validate_tree(tree) == []
    rounds = []
    for _ in range(7):
        began = time.thread_time()
        for _ in range(20):
            validate_tree(tree)
        rounds.append((time.thread_time() - began) / 20 * 1000)
    print(f"{sys.argv[1] if len(sys.argv) > 1 else 'this checkout'}: {min(rounds):.2f} ms per validate_tree")


if __name__ == "__main__":
    main()
