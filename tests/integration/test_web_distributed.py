"""``culm serve`` against a server database with a broker: it submits and reads; workers run the work."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import wait_for
from fastapi.testclient import TestClient

from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.web.app import create_app

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

        wait_for(waiting, 60, message="the worker to reach the waiting node")
        listed = client.get("/api/v1/pipelines", params={"name": "served-distributed"}).json()
        assert [i["id"] for i in listed["items"]] == [tree["id"]]
        assert client.post(f"/api/v1/nodes/{wait}/callback", json={"data": {"ok": 1}}).status_code == 200
        wait_for(lambda: client.get(f"/api/v1/pipelines/{tree['id']}").json()["state"] == "FINISHED", 60,
                 message="the pipeline to finish on the workers")
        outputs = client.get(f"/api/v1/nodes/{wait}/execution-data").json()["outputs"]
        assert outputs["received"] == {"ok": 1}
        metrics = client.get("/metrics").text
        assert "culm_queue_depth" in metrics and "culm_outbox_lag_seconds" in metrics
