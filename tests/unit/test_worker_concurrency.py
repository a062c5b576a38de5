"""`culm worker`'s default pool size: the number of CPUs, at most 4 (docs/distributed.md, "Scaling")."""

from __future__ import annotations

import pytest

celery = pytest.importorskip("culm.dispatch.celery")


@pytest.mark.parametrize(("cpus", "processes"), [(1, 1), (2, 2), (4, 4), (64, 4), (0, 1), (None, None)])
def test_the_default_is_the_cpus_at_most_four(cpus: int | None, processes: int | None) -> None:
    import os

    expected = processes if processes is not None else max(1, min(os.cpu_count() or 1, 4))
    assert celery.default_concurrency(cpus) == expected


def test_the_cap_is_documented_where_the_option_is() -> None:
    from culm.cli import build_parser

    worker = build_parser()._subparsers._group_actions[0].choices["worker"]  # type: ignore[union-attr]
    assert "the number of CPUs, at most 4" in " ".join(worker.format_help().split())
