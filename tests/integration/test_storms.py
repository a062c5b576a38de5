"""Control-call storms on every runtime: nothing is stranded, whatever the operators do (issue 14).

Each seed starts a few pipelines (parallel branches, a subprocess, polling, callback and failing
nodes) and fires a random sequence of pause / resume / pause_node_appoint / resume_node_appoint /
retry (with and without data) / skip / forced_fail / callback / revoke at them while they run. Then
it lets the engine settle (bounded) and checks every pipeline with the invariant checker
(:mod:`culm.core.invariants`): finished with its whole taken path run, revoked, or waiting on
something an operator can see and act on. It then acts as an operator would (resume, retry, skip,
call back) until every pipeline has ended, checking again after each round.

CI runs a few seeds per runtime; ``CULM_STORM_SEEDS=1-500`` (or ``3,7,9``) runs those instead.
A failing seed replays its call sequence (the engine's own timing still varies between runs).
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from engine_fixtures import run
from storm_ops import Storm, fire, operate
from support import wait_until

from culm import states
from culm.core.invariants import Violation, check, check_transitions
from culm.core.snapshots import read_snapshot

pytestmark = pytest.mark.timeout(600)

SETTLE_SECONDS = 20.0
DRIVE_ROUNDS = 25


def _seeds() -> list[int]:
    spec = os.environ.get("CULM_STORM_SEEDS", "1-3")
    seeds: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        seeds += range(int(lo), int(hi or lo) + 1)
    return seeds


def settle(runtime: Any, roots: list[str], timeout: float = SETTLE_SECONDS, strict: bool = True) -> bool:
    """Wait (bounded) until no root has a task left; with ``strict``, fail if one still has."""
    def idle() -> bool:
        return not any(read_snapshot(runtime.engine, r).tasks for r in roots)

    try:
        return wait_until(idle, timeout, 0.02, what="every root to have no task left")
    except AssertionError:
        if not strict:
            return False
    busy = [s for s in (read_snapshot(runtime.engine, r) for r in roots) if s.tasks]
    if not busy:
        return True
    left = [(t.kind, t.node_id, s.states[t.node_id].name if t.node_id in s.states else None,
             t.schedule_id, t.callback_id) for s in busy for t in s.tasks]
    raise AssertionError(f"tasks left after {timeout}s: {left}")


def _violations(runtime: Any, storm: Storm) -> list[Violation]:
    """The checker's findings on every pipeline, and on every transition the change feed holds."""
    found: list[Violation] = []
    for root in storm.roots:
        found += check(read_snapshot(runtime.engine, root))
        found += check_transitions(runtime.engine.store.feed.transitions(root)[0])
    return found


@pytest.mark.parametrize("seed", _seeds())
def test_storm_leaves_nothing_stranded(runtime: Any, seed: int) -> None:
    rng = random.Random(seed)
    storm = Storm()
    trees = [storm.pipeline(rng) for _ in range(3)]
    for tree in trees:
        storm.roots.append(run(runtime, tree))
    for call in range(1, 41):
        if fire(runtime, storm, rng) == "breathe":
            settle(runtime, storm.roots, timeout=0.3, strict=False)
        if call % 10 == 0:  # a snapshot is one committed moment: the promises hold mid-storm too
            found = _violations(runtime, storm)
            assert not found, storm.report(found, f"during the storm, after call {call}")
    settle(runtime, storm.roots)
    found = _violations(runtime, storm)
    assert not found, storm.report(found, "after the storm")
    for round_ in range(DRIVE_ROUNDS):
        moving = [r for r in storm.roots if operate(runtime, read_snapshot(runtime.engine, r), rng)]
        if not moving:
            break
        settle(runtime, storm.roots)
        found = _violations(runtime, storm)
        assert not found, storm.report(found, f"operator round {round_}")
    ended = {r: read_snapshot(runtime.engine, r).states[r].name for r in storm.roots}
    assert set(ended.values()) <= {states.FINISHED, states.REVOKED}, storm.report([], f"not ended: {ended}")
