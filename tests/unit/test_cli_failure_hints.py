"""What `culm run` and `culm watch` say of failed nodes: `culm skip` is offered only for a node the
engine skips (an activity, a start event, a subprocess end event refused its copy into the parent),
worded by what the skip does (review19a: the refused end event was told to be skipped, which the
engine refused)."""

from __future__ import annotations

from culm.cli.run import failure_report

REFUSED = ("pipeline sub1: its outputs could not be copied to the context variables ['${c0}'] of pipeline "
           "root (pipeline root: storing its context values ...); skip the end event end1 ...")


def report(types: dict[str, str], ex_data: dict[str, str]) -> str:
    flat = {"root": {"state": "RUNNING"}, **{n: {"state": "FAILED"} for n in types}}
    info = {n: ("", t) for n, t in types.items()}
    return failure_report("root", flat, info, ex_data)[0]


def test_a_refused_subprocess_end_event_is_offered_a_skip_saying_what_it_does() -> None:
    line = report({"end1": "EmptyEndEvent"}, {"end1": REFUSED})
    assert "skip the end event with `culm skip end1` (its subprocess finishes without copying its outputs" in line


def test_an_activity_is_offered_a_skip_as_before() -> None:
    assert ", skip with `culm skip act1` " in report({"act1": "ServiceActivity"}, {"act1": "boom"})


def test_nodes_the_engine_does_not_skip_are_not_offered_culm_skip() -> None:
    for kind in ("EmptyEndEvent", "my_end_event", "SubProcess", "ExclusiveGateway", "ParallelGateway"):
        line = report({"n1": kind}, {"n1": "it failed"})
        assert "culm skip" not in line and "`culm retry n1" in line, (kind, line)


def test_of_several_failed_nodes_the_one_that_skips_is_named() -> None:
    line = report({"act1": "ServiceActivity", "eg1": "ExclusiveGateway"}, {})
    assert "`culm retry NODE [--data '{...}']`, skip with `culm skip act1` " in line, line


def test_several_failed_nodes_that_skip_are_offered_a_skip_naming_which_kinds_skip() -> None:
    line = report({"act1": "ServiceActivity", "end1": "EmptyEndEvent"}, {"end1": REFUSED})
    assert "skip an activity, start event or refused subprocess end event with `culm skip NODE`" in line
