"""``culm serve`` against a server database with a broker: it submits and reads; workers run the work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from support import free_port, wait_until

from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.web.app import create_app
from culm.web.tokens import TokenStore

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]


def _tree() -> dict:
    start = EmptyStartEvent()
    wait = ServiceActivity(component_code="dist_callback", name="wait")
    start.extend(ServiceActivity(component_code="dist_sleep", name="sleep")).extend(wait).extend(EmptyEndEvent())
    tree = build_tree(start)
    tree["name"] = "served-distributed"
    return tree


def test_submit_read_and_control_through_the_service(distributed_backend: Any) -> None:
    runtime = distributed_backend.runtime()
    app = create_app(runtime)
    with TestClient(app) as client:
        token, _ = app.state.tokens.create("operator", "distributed")
        client.headers["Authorization"] = f"Bearer {token}"
        tree = _tree()
        wait = next(a["id"] for a in tree["activities"].values() if a["name"] == "wait")
        # The service does not import the workers' components: it cannot judge the codes, and
        # leaves that to the workers that run them.
        res = client.post("/api/v1/pipelines", json={"tree": tree})
        assert res.status_code == 201, res.text

        def waiting() -> bool:
            entry = client.get(f"/api/v1/pipelines/{tree['id']}").json()["children"].get(wait)
            return bool(entry and entry["state"] == "RUNNING")

        wait_until(waiting, 60, 0.1, what="the worker to reach the waiting node")
        listed = client.get("/api/v1/pipelines", params={"name": "served-distributed"}).json()
        assert [i["id"] for i in listed["items"]] == [tree["id"]]
        assert client.post(f"/api/v1/nodes/{wait}/callback", json={"data": {"ok": 1}}).status_code == 200
        wait_until(lambda: client.get(f"/api/v1/pipelines/{tree['id']}").json()["state"] == "FINISHED",
                   60, 0.1, what="the pipeline to finish on the workers")
        outputs = client.get(f"/api/v1/nodes/{wait}/execution-data").json()["outputs"]
        assert outputs["received"] == {"ok": 1}
        metrics = client.get("/metrics").text
        assert "culm_queue_depth" in metrics and "culm_outbox_lag_seconds" in metrics


def test_culm_serve_with_a_broker_only_submits_and_reads(distributed_backend: Any, tmp_path: Any) -> None:
    runtime = distributed_backend.runtime()
    token, _ = TokenStore(runtime.token_table()).create("operator", "serve process")
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "culm.cli", "serve", "--db", distributed_backend.db_url,
             "--broker", distributed_backend.broker_url, "--prefix", distributed_backend.prefix,
             "--port", str(port)],
            env={k: v for k, v in os.environ.items() if k != "CULM_IMPORTS"}, stdout=out, stderr=subprocess.STDOUT)
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    try:
        def up() -> bool:
            try:
                return httpx.get(url + "/", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 60, 0.1, what="culm serve to answer")
        tree = _tree()
        wait = next(a["id"] for a in tree["activities"].values() if a["name"] == "wait")
        assert httpx.post(url + "/api/v1/pipelines", json={"tree": tree}, headers=headers, timeout=30).status_code == 201

        def state(node: str) -> Any:
            got = httpx.get(f"{url}/api/v1/nodes/{node}/state", headers=headers, timeout=10)
            return got.json()["state"] if got.status_code == 200 else None

        wait_until(lambda: state(wait) == "RUNNING", 60, 0.1, what="the workers to reach the waiting node")
        assert httpx.post(f"{url}/api/v1/nodes/{wait}/callback", json={"data": {}}, headers=headers,
                          timeout=30).status_code == 200
        wait_until(lambda: state(tree["id"]) == "FINISHED", 60, 0.1,
                   what="the workers to finish the pipeline")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert "submits and reads (a broker's workers run the work)" in log.read_text()
