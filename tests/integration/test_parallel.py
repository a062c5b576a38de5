"""The suite in several processes (pytest-xdist, see ``tests/parallel.py``): an ``exclusive`` test
runs while no other test runs, in any of the session's processes; ``support.free_port`` hands each
process ports of its own, outside the kernel's ephemeral range."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from backends import HERE, REPO
from support import PORT_BLOCK, _ephemeral_low, free_port

pytestmark = pytest.mark.timeout(300)

INNER = '''
import json, os, time
import pytest

def _span(name, seconds):
    began = time.monotonic()
    time.sleep(seconds)  # stands for a test's work: the spans are what is observed
    with open(os.environ["SPANS"], "a") as fh:
        fh.write(json.dumps([name, began, time.monotonic(), os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")

@pytest.mark.parametrize("i", range(9))
def test_plain(i):
    _span(f"plain{i}", 0.3)

@pytest.mark.exclusive
@pytest.mark.parametrize("i", range(2))
def test_alone(i):
    _span(f"alone{i}", 0.6)
'''


def test_an_exclusive_test_runs_while_no_other_test_runs(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text("from parallel import pytest_runtest_protocol  # noqa: F401\n")
    (tmp_path / "test_inner.py").write_text(INNER)
    spans = tmp_path / "spans.jsonl"
    env = dict(os.environ, SPANS=str(spans), CULM_TEST_LOCK_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(HERE.parent), str(REPO)]))
    # Two files would go to two processes whole (loadfile): one file, spread test by test (load).
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "3", "--dist", "load", "-p", "no:cacheprovider",
                          "-c", os.devnull, "--rootdir", str(tmp_path), "-W", "ignore::pytest.PytestUnknownMarkWarning",
                          "test_inner.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0 and "11 passed" in out.stdout, out.stdout + out.stderr
    ran = [json.loads(line) for line in spans.read_text().splitlines()]
    assert len({worker for *_, worker in ran}) > 1, ran  # the plain tests did run side by side
    for name, began, ended, _ in ran:
        if name.startswith("alone"):
            beside = [other for other, b, e, _ in ran if other != name and b < ended and began < e]
            assert beside == [], f"{name} ran beside {beside}"


def test_free_ports_are_this_process_own_and_outside_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20  # asked for before any is bound: still all different
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    low = 20000 + PORT_BLOCK * int(worker or 0)
    if low + PORT_BLOCK <= _ephemeral_low():
        assert all(low <= port < low + PORT_BLOCK for port in ports), ports
