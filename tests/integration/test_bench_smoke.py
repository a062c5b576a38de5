"""Smoke run of the benchmark (``python -m bench --quick``): it completes and every pipeline ends
FINISHED. No timing is asserted; the real figures are in docs/performance.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FIELDS = {"scenario", "nodes", "median_s", "min_s", "max_s", "nodes_per_s", "peak_rss_mb", "repeats", "backend"}


def run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <args>`` from the repository root; asserts it exits 0."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, f"{module} exited with {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def run_bench(*args: str) -> list[dict]:
    proc = run_module("bench", "--quick", *args)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout
    return lines


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario, nodes, pipelines", [("batch", 10 * 17, 10), ("big", 104, 1)])
def test_quick_bench_runs_every_pipeline_to_finished(scenario: str, nodes: int, pipelines: int) -> None:
    (line,) = run_bench("--scenario", scenario)
    assert FIELDS <= line.keys(), line
    assert line["scenario"] == scenario
    assert line["ok"] is True, line
    assert line["pipelines"] == pipelines and line["finished"] == pipelines
    assert line["nodes"] == nodes
    assert line["repeats"] == 1
    assert 0 < line["min_s"] <= line["median_s"] <= line["max_s"]
    assert line["peak_rss_mb"] > 0


def test_quick_bench_prints_a_table() -> None:
    proc = run_module("bench", "--quick", "--scenario", "chain")
    assert "nodes/s" in proc.stdout and "chain" in proc.stdout.splitlines()[-1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_worker_round_trips_are_counted(backend: str) -> None:
    """``bench.worker_trips``: the workers' tracer counts their engine threads' round trips and
    transactions (at least two round trips and one commit per pipeline: its first task's claim and
    its commit), and ``--shapes`` prints them by round trips."""
    proc = run_module("bench.worker_trips", "--backend", backend, "--pipelines", "3", "--batches", "1", "--shapes")
    (line,) = [json.loads(text) for text in proc.stdout.splitlines() if text.startswith("{")]
    assert line["engine_round_trips"] >= 2 * 3 and line["engine_transactions"] >= 3, line
    assert "transactions by round trips" in proc.stdout and "COMMIT" in proc.stdout, proc.stdout


@pytest.mark.timeout(120)
def test_cpu_split_of_the_polled_distributed_batch_names_submitting_polling_and_the_servers_clients() -> None:
    """``bench.cpu distributed --polled 10`` on PostgreSQL: per batch, the submitter's CPU split
    into submitting and polling (with the polls made), Celery's part of the pool processes, and
    the bench database's backends' CPU attributed to the workers' pool processes and the
    submitter (every backend of the run has one of the cluster's processes as its client)."""
    import re

    proc = run_module("bench.cpu", "distributed", "--pipelines", "4", "--batches", "1", "--polled", "10")
    head, detail = [line for line in proc.stdout.splitlines() if line.strip()][-2:]
    assert "batch 1 (fresh workers)" in head and "pool processes" in head, proc.stdout
    polls = re.search(r"polling [0-9.]+ CPU-s \((\d+) polls\)", detail)
    assert polls and int(polls.group(1)) >= 4, detail
    assert "submitting" in detail and "pool processes' main threads (Celery)" in detail, detail
    clients = dict(re.findall(r"(workers' pool processes|submitter|others) ([0-9.]+)", detail.split("PostgreSQL by client:")[1]))
    assert float(clients["workers' pool processes"]) > 0 and "submitter" in clients, detail
    assert float(clients.get("others", "0")) == 0, detail


@pytest.mark.timeout(120)
def test_cpu_split_of_the_embedded_batch_runs() -> None:
    proc = run_module("bench.cpu", "embedded", "--pipelines", "5")
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0].strip() for line in lines] == ["together", "submit first"], proc.stdout
    assert all("engine thread" in line and "batches" in line for line in lines)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("shape", "calls"), [("states_moving", 300), ("states_big_moving", 9)])
def test_polls_of_moving_pipelines_run_their_callbacks_and_counted_calls(shape: str, calls: int) -> None:
    """``bench.instructions states_moving`` / ``states_big_moving`` without valgrind (their
    ``--inside`` part): every round's callbacks are accepted and the pipelines stay RUNNING for the
    counted polls."""
    proc = run_module("bench.instructions", shape, "--inside")
    assert json.loads(proc.stdout.splitlines()[-1]) == {"calls": calls}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shape", ["states_big_dropped", "states_waiting_dropped"])
def test_polls_that_drop_each_result_count_their_calls(shape: str) -> None:
    """``bench.instructions states_big_dropped`` / ``states_waiting_dropped`` without valgrind:
    the pipeline reaches the state its reads expect and the 100 counted calls run."""
    proc = run_module("bench.instructions", shape, "--inside")
    assert json.loads(proc.stdout.splitlines()[-1]) == {"calls": 100}


@pytest.mark.timeout(120)
def test_statement_count_of_one_pipeline_on_postgresql() -> None:
    proc = run_module("bench.statements", "--pipelines", "2", "--trace")
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["same_every_run"] is True, result
    # One transaction per task start and per activity result; every one of them sends statements.
    assert result["tasks_per_pipeline"] == 5
    assert result["transactions_per_pipeline"] >= result["tasks_per_pipeline"]
    assert result["statements_per_pipeline"] >= 2 * result["transactions_per_pipeline"]
    traced = proc.stdout.splitlines()[:-1]
    assert traced[0] == "== run_pipeline"
    assert sum(1 for line in traced if line.startswith("== task")) == result["tasks_per_pipeline"]


@pytest.mark.timeout(120)
def test_statement_count_of_batched_pipelines_on_postgresql() -> None:
    proc = run_module("bench.statements", "--batched", "--pipelines", "20")
    result = json.loads(proc.stdout.splitlines()[-1])
    # Each run_pipeline is a transaction of its own; the engine's batches add more, but far fewer
    # than the 14 per pipeline of one task at a time.
    assert 20 < result["transactions"] < 20 * 14, result
    assert result["statements"] > result["transactions"]
    # Every transaction is one round trip or more; the deferred writes and reads travel together.
    assert result["transactions"] <= result["round_trips"] < result["statements"], result
    # The server's own counts: some statements are sent unprepared (each text's first runs) and
    # culm_state is read by sequential scans on a fresh database. The analyses are reported too;
    # whether a runner's once-a-second look found a grown table within so short a run is timing
    # (tests/integration/test_pg_plans.py tests the analyses themselves).
    assert 0 < result["unprepared"] < result["statements"], result
    assert result["seq_scans"]["culm_state"][0] > 0 and result["seq_rows"] > 0, result
    assert isinstance(result["analyses"], int), result


@pytest.mark.timeout(120)
def test_ab_runs_both_checkouts_in_turn() -> None:
    """``python -m bench.ab`` against this same checkout (an A/A run): one pair, one summary."""
    proc = run_module("bench.ab", str(REPO), "batch", "--rounds", "1", "--quick")
    assert "round 1: A median" in proc.stdout and "; B median" in proc.stdout, proc.stdout
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["spec"] == "batch" and summary["rounds"] == 1
    assert summary["A_median_of_medians_s"] > 0 and summary["B_median_of_medians_s"] > 0


def test_ab_refuses_a_directory_that_is_not_a_checkout(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "bench.ab", str(tmp_path), "batch"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "is not a checkout of this project" in proc.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("spec", ["polled_latency_2ms", "polled_big_proc10ms", "distributed_polled_latency_mariadb_w2"])
def test_polled_specs_report_polled_and_waited_figures(spec: str) -> None:
    """The polled family: the polled figure, next to wait (and wait_idle, embedded)."""
    proc = run_module("bench.one", spec, "--quick")
    line = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert line["ok"] is True, line
    assert line["finished"] == line["pipelines"]
    assert line["median_s"] > 0 and line["wait_median_s"] > 0
    assert ("wait_idle_median_s" in line) == (not spec.startswith("distributed"))
    assert line["observing_cost"] > 0


@pytest.mark.timeout(120)
def test_stored_pipelines_bench_reports_size_and_ratios(tmp_path: Path) -> None:
    proc = run_module("bench.stored", "--pipelines", "300", "--rounds", "1", "--keep", str(tmp_path))
    line = json.loads(proc.stdout.splitlines()[-1])
    assert line["stored_pipelines"] == 300
    assert line["bytes_per_finished_pipeline"] > 0
    ratios = {f"full_over_empty_{k}" for k in
              ("batch_s", "run_pipeline_ms", "running_tree_ms", "feed_history_ms", "wait_finished_ms",
               "list_pipelines_ms")}
    assert ratios <= line.keys()
    assert (tmp_path / "stored-300.db").exists()  # kept for the next run
    again = json.loads(run_module("bench.stored", "--pipelines", "300", "--fill-only", "--keep", str(tmp_path))
                       .stdout.splitlines()[-1])
    assert again["stored_pipelines"] == 300
    assert again["fill_s"] == 0.0  # found, not filled again


def test_processes_started_for_a_measurement_run_the_measured_culm(tmp_path: Path) -> None:
    """``bench.ab --bench-here``: side A runs this checkout's bench against the other checkout's
    culm from a scratch directory of symlinks; the processes it starts (``culm worker``, pollers:
    ``bench.scenarios.home_env``) must import that culm too, not this checkout's."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(REPO / "culm", other / "culm", ignore=shutil.ignore_patterns("__pycache__"))
    (other / "bench").mkdir()
    (other / "bench" / "one.py").write_text("")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    code = (
        "import subprocess, sys\n"
        "from pathlib import Path\n"
        "from bench.ab import _with_this_bench\n"
        f"place = _with_this_bench(Path({str(other)!r}), Path({str(scratch)!r}))\n"
        "code = 'from bench.scenarios import home_env; import subprocess, sys; home, env = home_env(); '"
        " 'print(subprocess.run([sys.executable, \"-c\", \"import culm; print(culm.__file__)\"], cwd=home, env=env,'"
        " ' capture_output=True, text=True, check=True).stdout.strip())'\n"
        "env = {k: v for k, v in __import__('os').environ.items() if k != 'PYTHONPATH'}\n"
        "env['PYTHONPATH'] = str(place)\n"  # as bench.ab's run_one starts side A
        "print(subprocess.run([sys.executable, '-c', code], cwd=place, env=env, capture_output=True, text=True,"
        " check=True).stdout.strip())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    started = Path(proc.stdout.strip().splitlines()[-1]).resolve()
    assert started == (other / "culm" / "__init__.py").resolve(), started
