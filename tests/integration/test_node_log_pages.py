"""Reading a run's log lines is bounded (a poller logging for days under one version held millions
of lines, and every read loaded them all): ``get_node_logs`` keeps its contract shape (one text)
and returns at most the last ``limits.MAX_LOG_PAGE_LINES`` lines / ``MAX_LOG_PAGE_CHARS``
characters under a first line that says how many were left out; ``get_node_log_page`` pages
through all of them. On every runtime: the reads run in this process, so the bounds are lowered
here to keep the run small."""

from __future__ import annotations

import pytest
from engine_fixtures import finish

from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.model import limits

pytestmark = pytest.mark.timeout(120)

LINES = 120


@pytest.fixture
def logged(runtime):
    start, act, end = EmptyStartEvent(), ServiceActivity(component_code="t_log_flood"), EmptyEndEvent()
    act.component.inputs.lines = Var(type=Var.PLAIN, value=LINES)
    start.extend(act).extend(end)
    tree = build_tree(start)
    finish(runtime, tree, timeout=60)
    return act.id


def item(i: int) -> str:
    return f"[INFO] item {i} "


def test_get_node_logs_returns_the_last_lines_and_says_how_many_were_left_out(runtime, logged, monkeypatch):
    assert api.get_node_logs(runtime, logged).data.splitlines() == [item(i) for i in range(LINES)]
    monkeypatch.setattr(limits, "MAX_LOG_PAGE_LINES", 50)
    monkeypatch.setattr(limits, "LOG_READ_CHUNK", 7)
    res = api.get_node_logs(runtime, logged)
    assert res.result, res.message
    note, *lines = res.data.splitlines()
    assert lines == [item(i) for i in range(70, LINES)]
    assert note.startswith(f"[culm: the first 70 of {LINES} lines of node {logged} (version ")
    assert "get_node_log_page" in note and "--offset" in note and "offset=N&limit=M" in note
    monkeypatch.setattr(limits, "MAX_LOG_PAGE_CHARS", 100)  # a few lines of "[INFO] item N "
    note, *lines = api.get_node_logs(runtime, logged).data.splitlines()
    assert lines == [item(i) for i in range(LINES - len(lines), LINES)] and 3 < len(lines) < 10
    assert note.startswith(f"[culm: the first {LINES - len(lines)} of {LINES} lines")


def test_pages_cover_every_line_once_in_order(runtime, logged, monkeypatch):
    page = api.get_node_log_page(runtime, logged, offset=0, limit=30).data
    assert page["lines"] == [item(i) for i in range(30)] and (page["offset"], page["total"]) == (0, LINES)
    assert page["node_id"] == logged and page["version"]
    assert api.get_node_log_page(runtime, logged, offset=100, limit=50).data["lines"] == [
        item(i) for i in range(100, LINES)]
    tail = api.get_node_log_page(runtime, logged, limit=10).data
    assert tail["offset"] == LINES - 10 and tail["lines"] == [item(i) for i in range(LINES - 10, LINES)]
    assert api.get_node_log_page(runtime, logged, page["version"], 500).data["lines"] == []
    # Past the characters' bound a page is shorter; following offsets still reads every line once.
    monkeypatch.setattr(limits, "MAX_LOG_PAGE_CHARS", 100)
    monkeypatch.setattr(limits, "LOG_READ_CHUNK", 3)
    seen: list[str] = []
    while len(seen) < LINES:
        got = api.get_node_log_page(runtime, logged, offset=len(seen), limit=1000).data
        assert got["offset"] == len(seen) and 0 < sum(len(x) + 1 for x in got["lines"]) <= 100
        seen += got["lines"]
    assert seen == [item(i) for i in range(LINES)]


def test_bad_page_arguments_are_refused_naming_them(runtime, logged):
    for kwargs, named in (({"offset": -1}, "offset must be a line number"), ({"offset": "3"}, "offset"),
                          ({"limit": 0}, "limit must be a whole number from 1 to 20,000"),
                          ({"limit": 20_001}, "limit"), ({"limit": True}, "limit"), ({"version": ""}, "version")):
        res = api.get_node_log_page(runtime, logged, **kwargs)
        assert not res.result and named in res.message, (kwargs, res.message)
    unknown = api.get_node_log_page(runtime, "n_never_created")
    assert unknown.result and unknown.data["total"] == 0 and unknown.data["lines"] == []
    assert api.get_node_logs(runtime, "n_never_created").data == ""
