"""Load on ``culm serve``: the state-tree endpoint of a 1,000-node pipeline, and SSE fan-out.

    python -m bench.web_load [--seconds 10] [--concurrency 8] [--watchers 100]

Starts ``culm serve`` as its own process on a fresh SQLite file (it runs the engine), then from this
process: (1) GETs ``/api/v1/pipelines/{id}`` of a finished 1,000-node pipeline (``wide_pipeline``:
100 branches of 10) from ``--concurrency`` connections for ``--seconds``; (2) opens ``--watchers``
SSE streams on one pipeline, submits it (a 100-branch, 1,000-activity run) and measures how many
state changes each watcher got and how long after the change was written. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

import culm
from bench.trees import wide_pipeline
from culm import api
from culm.web.tokens import TokenStore

REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(url: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "culm.cli", "serve", "--db", url, "--port", str(port),
                             "--import", "bench.trees", "--max-body", str(64 * 1024 * 1024)], env=env,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("culm serve did not start")


async def _hammer(base: str, headers: dict, path: str, seconds: float, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    size = 0
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        stop = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal size
            while time.monotonic() < stop:
                began = time.perf_counter()
                res = await client.get(path)
                res.raise_for_status()
                size = len(res.content)
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {"requests": len(latencies), "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p95_ms": round(1000 * latencies[int(len(latencies) * 0.95)], 1), "response_kib": size // 1024}


async def _fan_out(base: str, headers: dict, watchers: int, tree: dict) -> dict[str, Any]:
    root = tree["id"]
    counts = [0] * watchers
    lags: list[float] = []
    finished_at: list[float] = []
    ready = asyncio.Event()
    opened = 0

    async def watch(i: int, client: httpx.AsyncClient) -> None:
        nonlocal opened
        async with client.stream("GET", "/api/v1/events", params={"root_id": root}) as res:
            async for line in res.aiter_lines():
                if line.startswith("event: hello"):
                    opened += 1
                    if opened == watchers:
                        ready.set()
                elif line.startswith("data: {") and line != "data: {}":
                    change = json.loads(line[6:])
                    counts[i] += 1
                    lags.append(time.time() - change["time"])
                    if change["node_id"] == root and change["to_state"] == "FINISHED":
                        finished_at.append(time.time())
                        return

    limits = httpx.Limits(max_connections=watchers + 10)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=300, limits=limits) as client:
        tasks = [asyncio.create_task(watch(i, client)) for i in range(watchers)]
        await asyncio.wait_for(ready.wait(), 60)
        submitted = time.time()
        res = await client.post("/api/v1/pipelines", json={"tree": tree})
        res.raise_for_status()
        await asyncio.wait_for(asyncio.gather(*tasks), 600)
    lags.sort()
    total = sum(counts)
    span = max(finished_at) - submitted
    return {"watchers": watchers, "changes_per_watcher": min(counts), "events_delivered": total,
            "events_per_s": round(total / span, 1), "run_s": round(span, 2),
            "lag_p50_ms": round(1000 * statistics.median(lags), 1),
            "lag_p95_ms": round(1000 * lags[int(len(lags) * 0.95)], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--watchers", type=int, default=100)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="culm-web-load-")
    url = f"sqlite:///{folder}/web.db"
    tree = wide_pipeline(100, 10)
    with culm.Runtime(url) as rt:
        api.run_pipeline(rt, tree)
        rt.wait(tree["id"], 600)
        token, _ = TokenStore(rt.token_table()).create("operator", "bench")
        nodes = len(api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["children"])
    port = _port()
    proc = _start(url, port)
    try:
        base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
        states = asyncio.run(_hammer(base, headers, f"/api/v1/pipelines/{tree['id']}", args.seconds,
                                     args.concurrency))
        fan = asyncio.run(_fan_out(base, headers, args.watchers, wide_pipeline(100, 10)))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    print(json.dumps({"state_tree": {"nodes": nodes, "concurrency": args.concurrency, **states}, "sse": fan,
                      "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
