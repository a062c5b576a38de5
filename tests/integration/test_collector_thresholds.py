"""The garbage collector's first threshold while an engine thread runs in the process.

An embedded runtime (and any process running an engine loop) raises Python's first threshold
from 700 to 5,000 while its engine thread runs, where the host left Python's defaults, and puts
them back when the last one stops; ``$CULM_GC_THRESHOLD`` sets another value or leaves the
collector alone (``culm.dispatch.threads._Collector``).
"""

from __future__ import annotations

import gc

import components  # noqa: F401 - registers t_echo
import pytest
from engine_fixtures import finish

import culm
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.dispatch import threads

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def collector(monkeypatch):
    """Python's default thresholds, and no engine thread of another test counted."""
    kept = gc.get_threshold()
    monkeypatch.setattr(threads._Collector, "_users", 0)
    monkeypatch.setattr(threads._Collector, "_restore", None)
    monkeypatch.setattr(threads._Collector, "_set", None)
    monkeypatch.delenv("CULM_GC_THRESHOLD", raising=False)
    gc.set_threshold(*threads.PYTHON_GC_DEFAULTS)
    yield
    gc.set_threshold(*kept)


def run_one(rt: culm.Runtime) -> None:
    act = ServiceActivity(component_code="t_echo")
    act.component.inputs.x = Var(type=Var.PLAIN, value="gc")
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    assert finish(rt, build_tree(start))["state"] == "FINISHED"


def test_an_engine_thread_raises_the_first_threshold_until_the_last_one_stops(collector, tmp_path):
    first = culm.Runtime(f"sqlite:///{tmp_path}/a.db")
    assert gc.get_threshold() == (threads.GC_THRESHOLD, 10, 10)
    second = culm.Runtime(f"sqlite:///{tmp_path}/b.db")
    run_one(first)
    first.close()
    assert gc.get_threshold() == (threads.GC_THRESHOLD, 10, 10)  # the second one still runs
    run_one(second)
    second.close()
    assert gc.get_threshold() == threads.PYTHON_GC_DEFAULTS


def test_a_runtime_without_workers_leaves_the_collector_alone(collector, tmp_path):
    rt = culm.Runtime(f"sqlite:///{tmp_path}/a.db", workers=0)
    try:
        assert gc.get_threshold() == threads.PYTHON_GC_DEFAULTS
    finally:
        rt.close()


def test_thresholds_the_host_set_are_its_own(collector, tmp_path):
    gc.set_threshold(900, 20, 5)
    rt = culm.Runtime(f"sqlite:///{tmp_path}/a.db")
    try:
        assert gc.get_threshold() == (900, 20, 5)
        run_one(rt)
    finally:
        rt.close()
    assert gc.get_threshold() == (900, 20, 5)


def test_a_change_the_host_made_meanwhile_is_not_undone(collector, tmp_path):
    rt = culm.Runtime(f"sqlite:///{tmp_path}/a.db")
    gc.set_threshold(1200, 10, 10)
    rt.close()
    assert gc.get_threshold() == (1200, 10, 10)


def test_the_environment_sets_the_threshold_or_leaves_the_collector_alone(collector, tmp_path, monkeypatch):
    monkeypatch.setenv("CULM_GC_THRESHOLD", "off")
    rt = culm.Runtime(f"sqlite:///{tmp_path}/a.db")
    assert gc.get_threshold() == threads.PYTHON_GC_DEFAULTS
    rt.close()

    gc.set_threshold(900, 20, 5)  # an explicit number wins over what the host set
    monkeypatch.setenv("CULM_GC_THRESHOLD", "12000")
    rt = culm.Runtime(f"sqlite:///{tmp_path}/b.db")
    assert gc.get_threshold() == (12000, 20, 5)
    rt.close()
    assert gc.get_threshold() == (900, 20, 5)


def test_a_mistyped_threshold_is_named_and_the_default_used(collector, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CULM_GC_THRESHOLD", "5k")
    rt = culm.Runtime(f"sqlite:///{tmp_path}/a.db")
    try:
        assert gc.get_threshold() == (threads.GC_THRESHOLD, 10, 10)
        assert "$CULM_GC_THRESHOLD must be a whole number >= 1 or 'off', got '5k'" in caplog.text
    finally:
        rt.close()
