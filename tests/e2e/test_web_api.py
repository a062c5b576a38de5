"""The REST API of ``culm serve`` over real HTTP (uvicorn in a thread, an embedded SQLite runtime).

The last test checks that every endpoint of the OpenAPI schema was exercised here for every status
code it documents.
"""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from support import wait_until
from web_support import (  # noqa: F401 - fixtures
    divide_tree,
    failing_gateways_tree,
    served,
    showcase_tree,
)

from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree

pytestmark = pytest.mark.timeout(120)

SEEN: set[tuple[str, str, int]] = set()


def _record(response: httpx.Response) -> None:
    SEEN.add((response.request.method, response.request.url.path, response.status_code))


def client(served: Any, role: str | None = "admin", **kw: Any) -> httpx.Client:  # noqa: F811
    c = served.client(role, **kw)
    c.event_hooks["response"].append(_record)
    return c


@pytest.fixture(scope="module")
def admin(served: Any) -> httpx.Client:  # noqa: F811
    return client(served, "admin")


def submit(admin: httpx.Client, tree: dict, **extra: Any) -> str:
    res = admin.post("/api/v1/pipelines", json={"tree": tree, **extra})
    assert res.status_code == 201, res.text
    return str(res.json()["id"])


def node_id(tree: dict, name: str) -> str:
    for group in ("activities", "gateways"):
        for node in tree[group].values():
            if node.get("name") == name:
                return str(node["id"])
    raise KeyError(name)


# -- auth ---------------------------------------------------------------------------------------


def test_nothing_is_visible_without_a_token(served: Any) -> None:  # noqa: F811
    with client(served, None) as anon:
        for path in ("/api/v1/pipelines", "/api/v1/components", "/api/v1/me", "/metrics", "/api/v1/tokens"):
            res = anon.get(path)
            assert res.status_code == 401, path
            assert res.headers["content-type"].startswith("application/problem+json")
            assert "bearer token" in res.json()["detail"]
        assert anon.get("/").status_code == 200  # the sign-in page itself
        # a body or a query the framework refuses before any endpoint runs: still 401, not 422
        for path in ("/api/v1/pipelines", "/api/v1/validate", "/api/v1/nodes/x/callback"):
            res = anon.post(path, content=b"{bad", headers={"Content-Type": "application/json"})
            assert res.status_code == 401, (path, res.text)
        assert anon.get("/api/v1/pipelines", params={"limit": 0}).status_code == 401
        deep = b"[" * 5_000 + b"]" * 5_000  # the framework's JSON parser gives up: also 401 first
        assert anon.post("/api/v1/pipelines", content=deep, headers={"Content-Type": "application/json"}).status_code == 401


def test_a_revoked_or_unknown_token_is_refused(served: Any) -> None:  # noqa: F811
    with client(served, "revoked") as revoked:
        res = revoked.get("/api/v1/pipelines")
        assert res.status_code == 401
        assert res.json()["detail"] == "the token is unknown or revoked"
    with httpx.Client(base_url=served.url, headers={"Authorization": "Bearer culm_nope_nope"}) as wrong:
        assert wrong.get("/api/v1/me").status_code == 401


def test_a_viewer_reads_but_cannot_submit_control_or_manage_tokens(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    tree = divide_tree(0)
    root = submit(admin, tree)
    failed = node_id(tree, "divide")
    served.wait_state(failed, "FAILED")
    with client(served, "viewer") as viewer:
        assert viewer.get(f"/api/v1/pipelines/{root}").status_code == 200
        assert viewer.get("/api/v1/me").json()["role"] == "viewer"
        for path, body in ((f"/api/v1/nodes/{failed}/retry", {}), (f"/api/v1/nodes/{failed}/skip", None),
                           (f"/api/v1/pipelines/{root}/revoke", None), ("/api/v1/pipelines", {"tree": tree})):
            res = viewer.post(path, json=body)
            assert res.status_code == 403, path
            assert "operator role" in res.json()["detail"]
        assert viewer.get("/api/v1/tokens").status_code == 403
    assert served.state(failed) == "FAILED"  # nothing changed
    assert served.state(root) == "RUNNING"
    with client(served, "operator") as operator:
        assert operator.get("/api/v1/tokens").status_code == 403
        assert operator.post(f"/api/v1/pipelines/{root}/revoke").status_code == 200
    served.wait_state(root, "REVOKED")


def test_repeated_bad_tokens_from_one_client_are_slowed_down(served: Any) -> None:  # noqa: F811
    import time

    throttle = served.app.state.auth.throttle
    with httpx.Client(base_url=served.url, headers={"Authorization": "Bearer culm_bad_token"}) as bad:
        for _ in range(3):
            assert bad.get("/api/v1/me").status_code == 401
        assert throttle.delay("127.0.0.1") > 0
        began = time.monotonic()
        assert bad.get("/api/v1/me").status_code == 401
        assert time.monotonic() - began >= throttle.delay("127.0.0.1") / 2 * 0.9
    with client(served, "viewer") as good:
        assert good.get("/api/v1/me").status_code == 200  # a good token clears the record
    assert throttle.delay("127.0.0.1") == 0


# -- tokens -------------------------------------------------------------------------------------


def test_admin_creates_lists_and_revokes_tokens(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    made = admin.post("/api/v1/tokens", json={"role": "viewer", "name": "dashboard"})
    assert made.status_code == 201
    token, token_id = made.json()["token"], made.json()["id"]
    listed = admin.get("/api/v1/tokens").json()
    assert any(t["id"] == token_id and t["role"] == "viewer" and "token" not in t for t in listed)
    assert next(t for t in listed if t["id"] == token_id)["last_used_time"] is None
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {token}"}) as fresh:
        assert fresh.get("/api/v1/me").json()["role"] == "viewer"
        used = next(t for t in admin.get("/api/v1/tokens").json() if t["id"] == token_id)
        assert used["last_used_time"] is not None
        assert admin.delete(f"/api/v1/tokens/{token_id}").status_code == 200
        assert fresh.get("/api/v1/me").status_code == 401
    assert admin.delete(f"/api/v1/tokens/{token_id}").status_code == 409
    assert admin.delete("/api/v1/tokens/0000").status_code == 404
    bad = admin.post("/api/v1/tokens", json={"role": "root"})
    assert bad.status_code == 422 and "viewer, operator, admin" in bad.json()["detail"]


def test_a_token_name_that_would_forge_a_line_of_the_token_list_is_refused(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    # Found probing (session 15): `culm token list` prints a line a token and escaped escapes but
    # not newlines: a name from an admin's POST forged a line listing an admin token that is not there.
    before = [t["id"] for t in admin.get("/api/v1/tokens").json()]
    forged = "ci\n0123456789abcdef  admin    active  created 2026-12-06 10:00:00  used never"
    for name in (forged, "tab\there", "bell\x07", "rtl\u202eevil"):
        bad = admin.post("/api/v1/tokens", json={"role": "viewer", "name": name})
        assert bad.status_code == 422, bad.text
        assert "which cannot be printed (names take printable characters only)" in bad.json()["detail"]
    assert [t["id"] for t in admin.get("/api/v1/tokens").json()] == before  # nothing stored
    assert admin.post("/api/v1/tokens", json={"role": "viewer", "name": "ci runner – ünïcode"}).status_code == 201


# -- submitting and validating ------------------------------------------------------------------


def test_submit_runs_the_pipeline_and_the_list_shows_it(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    tree = divide_tree(4, name="listed-divide")
    root = submit(admin, tree)
    served.wait_state(root, "FINISHED")
    listed = admin.get("/api/v1/pipelines", params={"name": "listed-divide"}).json()
    assert [i["id"] for i in listed["items"]] == [root]
    assert listed["items"][0]["state"] == "FINISHED" and listed["total"] == 1
    assert listed["counts"] == {"FINISHED": 1}
    only_failed = admin.get("/api/v1/pipelines", params={"state": "FINISHED", "limit": 1}).json()
    assert len(only_failed["items"]) == 1 and only_failed["total"] >= 1
    assert admin.get("/api/v1/pipelines", params={"state": "NOPE"}).status_code == 422
    assert admin.get("/api/v1/pipelines", params={"limit": 0}).status_code == 422
    data = admin.get(f"/api/v1/nodes/{node_id(tree, 'divide')}/execution-data").json()
    assert data["outputs"]["result"] == 25.0


def test_a_tree_id_runs_once_and_new_ids_runs_it_again(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    tree = divide_tree(5)
    submit(admin, tree)
    again = admin.post("/api/v1/pipelines", json={"tree": tree})
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    other = submit(admin, tree, new_ids=True)
    assert other != tree["id"]
    served.wait_state(other, "FINISHED")


def test_an_invalid_tree_is_refused_naming_its_nodes_and_nothing_is_stored(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    tree = divide_tree(1)
    act = node_id(tree, "divide")
    tree["activities"][act]["component"]["code"] = "no_such_component"
    before = admin.get("/api/v1/pipelines").json()["total"]
    res = admin.post("/api/v1/pipelines", json={"tree": tree})
    assert res.status_code == 422
    assert res.headers["content-type"].startswith("application/problem+json")
    assert any(p["node_id"] == act and "no_such_component" in p["message"] for p in res.json()["problems"])
    assert admin.get("/api/v1/pipelines").json()["total"] == before
    assert admin.get(f"/api/v1/pipelines/{tree['id']}").status_code == 404
    checked = admin.post("/api/v1/validate", json={"tree": tree}).json()
    assert checked["valid"] is False and any(p["node_id"] == act for p in checked["problems"])
    assert admin.post("/api/v1/validate", json={"tree": divide_tree(1)}).json() == {"valid": True, "problems": []}


@pytest.mark.parametrize(("body", "detail"), [
    (b"{not json", "not valid JSON: Expecting property name enclosed in double quotes at line 1, column 2 (character 1)"),
    (b'{"tree": {},\n}', "not valid JSON: Expecting property name enclosed in double quotes at line 2, column 1"),
    (b"", "the request body is empty: send a JSON object"),
    (b"[]", "the request body must be a JSON object, not an array"),
    (b'{"tree": 3}', "body.tree: Input should be a valid dictionary, not a number"),
    (b'{"tree": {"id": 5}}', "the tree's id must be a non-empty string, not 5"),
])
def test_malformed_bodies_get_a_clear_422(served: Any, admin: httpx.Client, body: bytes, detail: str) -> None:  # noqa: F811
    before = admin.get("/api/v1/pipelines").json()["total"]
    res = admin.post("/api/v1/pipelines", content=body, headers={"Content-Type": "application/json"})
    assert res.status_code == 422, res.text
    assert detail in res.json()["detail"], res.text
    checked = admin.post("/api/v1/validate", content=body, headers={"Content-Type": "application/json"})
    # a tree that is a dict is reported on (valid: false, each problem); anything else is refused
    assert checked.status_code == 422 or (checked.status_code == 200 and checked.json()["valid"] is False)
    assert admin.get("/api/v1/pipelines").json()["total"] == before


def test_a_body_nested_too_deeply_to_parse_says_so(admin: httpx.Client) -> None:
    deep = b'{"tree": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    res = admin.post("/api/v1/pipelines", content=deep, headers={"Content-Type": "application/json"})
    assert res.status_code == 400
    assert res.json()["detail"].startswith("the request body nests arrays or objects too deeply to be read")


@pytest.mark.parametrize(("body", "detail"), [
    (b'{"tree": {"id": ' + b"9" * 5_000 + b"}}", "the request body holds a number of more than 4,300 digits"),
    (b'{"tree": {"id": "p\xff"}}', "the request body is not UTF-8 text (invalid start byte at byte 18)"),
])
def test_a_body_python_cannot_read_says_why(admin: httpx.Client, body: bytes, detail: str) -> None:
    # Both were "the request body could not be read: ValueError" (or UnicodeDecodeError).
    for path in ("/api/v1/pipelines", "/api/v1/validate"):
        res = admin.post(path, content=body, headers={"Content-Type": "application/json"})
        assert res.status_code == 400 and res.json()["detail"].startswith(detail), res.text


def test_a_key_twice_in_one_object_is_refused_naming_it(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    """JSON parsers keep the last of two equal keys: a second flow under one id silently replaced
    the first, and the tree ran without it."""
    tree = divide_tree(1)
    flow = next(iter(tree["flows"]))
    text = json.dumps({"tree": tree}).replace('"flows": {', f'"flows": {{"{flow}": {{"id": "{flow}"}}, ', 1)
    before = admin.get("/api/v1/pipelines").json()["total"]
    for path in ("/api/v1/pipelines", "/api/v1/validate"):
        res = admin.post(path, content=text, headers={"Content-Type": "application/json"})
        assert res.status_code == 422, res.text
        assert f"the request body has the key '{flow}' twice in one object" in res.json()["detail"]
    assert admin.get("/api/v1/pipelines").json()["total"] == before


def test_a_lone_surrogate_echoed_in_problems_is_answered_escaped(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    """Found probing (session 16): a tree whose id was "\\ud800" (JSON may escape half of a UTF-16
    pair) had its problems answered 500: the id echoed in them could not be written as UTF-8."""
    before = admin.get("/api/v1/pipelines").json()["total"]
    for path in ("/api/v1/validate", "/api/v1/pipelines"):
        res = admin.post(path, content=b'{"tree": {"id": "p\\ud800"}}', headers={"Content-Type": "application/json"})
        assert res.status_code in (200, 422), res.text
        problems = res.json()["problems"]
        assert any(p["message"] == "id holds a lone surrogate" for p in problems), problems
        assert "p\ud800" in {p["node_id"] for p in problems}  # the id as sent, escaped in the JSON text
    assert admin.get("/api/v1/pipelines").json()["total"] == before


@pytest.mark.parametrize("offset", ["4611686018427387905", "99999999999999999999999999"])
def test_a_list_offset_past_what_is_taken_is_a_422_naming_it(admin: httpx.Client, offset: str) -> None:
    # Found probing (session 16): it was a 409 Conflict, as if the pipelines had changed.
    res = admin.get(f"/api/v1/pipelines?offset={offset}")
    assert res.status_code == 422 and res.json()["detail"].startswith("query.offset: "), res.text


def test_a_body_that_is_not_sent_as_json_says_so(admin: httpx.Client) -> None:
    res = admin.post("/api/v1/pipelines", content=b'{"tree": {}}', headers={"Content-Type": "text/plain"})
    assert res.status_code == 422
    assert res.json()["detail"] == "send the body as JSON with Content-Type: application/json (got 'text/plain')"


def test_nan_and_infinities_in_data_are_answered_as_strict_json(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    """Python writes NaN as a bare `NaN`, which a browser's JSON.parse refuses: the console could
    not show such a node, nor the pipeline's tree."""

    def strict(res: httpx.Response) -> Any:
        assert res.status_code == 200, res.text
        return json.loads(res.text, parse_constant=lambda name: pytest.fail(f"{name} in {res.request.url}"))

    tree = divide_tree(0)
    act = node_id(tree, "divide")
    tree["activities"][act]["component"]["inputs"]["divisor"]["value"] = float("nan")
    sent = admin.post("/api/v1/pipelines", content=json.dumps({"tree": tree}),  # httpx's json= refuses NaN
                      headers={"Content-Type": "application/json"})
    assert sent.status_code == 201, sent.text
    root = tree["id"]
    served.wait_state(root, "FINISHED")
    assert strict(admin.get(f"/api/v1/nodes/{act}/execution-data"))["outputs"]["result"] == "NaN"
    assert strict(admin.get(f"/api/v1/nodes/{act}"))["execution_data"]["inputs"]["divisor"] == "NaN"
    assert strict(admin.get(f"/api/v1/pipelines/{root}/tree"))["activities"][act]["component"]["inputs"]["divisor"][
        "value"] == "NaN"


@pytest.mark.parametrize(("kind", "shown"), [
    ("long int", "<an integer of 16,610 bits, too long to show>"), ("tuple key", {"(1, 2)": "pair"}),
    ("holds itself", ["a", "<cycle>"]), ("set", [3]),
])
def test_outputs_json_cannot_write_are_shown(served: Any, admin: httpx.Client, kind: str, shown: Any) -> None:  # noqa: F811
    # The long int and the tuple key were a 500; the value holding itself, a request that never
    # ended, its thread walking the value for ever.
    start, act = EmptyStartEvent(), ServiceActivity(component_code="web_awkward")
    act.component.inputs.kind = Var(type=Var.PLAIN, value=kind)
    start.extend(act).extend(EmptyEndEvent())
    tree = build_tree(start)
    assert api.run_pipeline(served.runtime, tree).result
    served.wait_state(tree["id"], "FINISHED")
    for path in (f"/api/v1/nodes/{act.id}/execution-data", f"/api/v1/nodes/{act.id}"):
        res = admin.get(path, timeout=10)
        assert res.status_code == 200, res.text
        body = res.json()
        outputs = body["outputs"] if "outputs" in body else body["execution_data"]["outputs"]
        assert outputs["out"] == shown


def test_oversized_bodies_are_refused_with_413_and_nothing_stored(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    tree = divide_tree(1)
    tree["padding"] = "x" * (70 * 1024)
    before = admin.get("/api/v1/pipelines").json()["total"]
    res = admin.post("/api/v1/pipelines", json={"tree": tree})
    assert res.status_code == 413 and "nothing was stored" in res.json()["detail"]

    def chunks() -> Any:  # no Content-Length: counted as it arrives
        yield b'{"tree": ' + json.dumps(tree).encode()[:40_000]
        yield json.dumps(tree).encode()[40_000:] + b"}"

    assert admin.post("/api/v1/pipelines", content=chunks(),
                      headers={"Content-Type": "application/json"}).status_code == 413
    for path in ("/api/v1/validate", "/api/v1/tokens", "/api/v1/preview"):
        assert admin.post(path, json={"tree": tree}).status_code == 413, path
    assert admin.get("/api/v1/pipelines").json()["total"] == before
    assert admin.get(f"/api/v1/pipelines/{tree['id']}").status_code == 404


# -- reading ------------------------------------------------------------------------------------


def test_state_tree_node_data_histories_and_logs(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    tree = divide_tree(0)
    root = submit(admin, tree)
    act = node_id(tree, "divide")
    served.wait_state(act, "FAILED")
    states = admin.get(f"/api/v1/pipelines/{root}").json()
    assert states["state"] == "RUNNING"
    entry = states["children"][act]
    assert entry["state"] == "FAILED" and entry["wait_reason"]["text"]
    assert admin.get(f"/api/v1/pipelines/{root}/tree").json()["id"] == root
    debug = admin.get(f"/api/v1/pipelines/{root}/debug").json()
    assert {"context_values", "processes"} <= set(debug)
    node = admin.get(f"/api/v1/nodes/{act}").json()
    assert "ZeroDivisionError" in node["execution_data"]["outputs"]["ex_data"]
    assert node["node"]["component"]["code"] == "web_divide"
    assert admin.get(f"/api/v1/nodes/{act}/state").json()["state"] == "FAILED"
    assert admin.get(f"/api/v1/nodes/{act}/data").json()["inputs"]["divisor"]["value"] == 0
    assert "dividing 100 by 0" in admin.get(f"/api/v1/nodes/{act}/logs").text
    logged = admin.get(f"/api/v1/nodes/{act}/logs").text.splitlines()
    page = admin.get(f"/api/v1/nodes/{act}/logs", params={"offset": 0, "limit": 1})
    assert page.text.splitlines() == logged[:1]
    assert (page.headers["X-Culm-Log-Total"], page.headers["X-Culm-Log-Offset"]) == (str(len(logged)), "0")
    tail = admin.get(f"/api/v1/nodes/{act}/logs", params={"limit": 1})
    assert tail.text.splitlines() == logged[-1:] and tail.headers["X-Culm-Log-Offset"] == str(len(logged) - 1)
    for bad in ({"limit": 0}, {"limit": 20_001}, {"offset": -1}):
        res = admin.get(f"/api/v1/nodes/{act}/logs", params=bad)
        assert res.status_code == 422 and next(iter(bad)) in res.text, res.text
    assert admin.get(f"/api/v1/nodes/{act}/histories").json() == []
    assert admin.get(f"/api/v1/nodes/{act}/histories", params={"loop": "first"}).status_code == 422

    retried = admin.post(f"/api/v1/nodes/{act}/retry", json={"inputs": {"divisor": 50}})
    assert retried.status_code == 200
    served.wait_state(root, "FINISHED")
    hist = admin.get(f"/api/v1/nodes/{act}/histories").json()
    assert len(hist) == 1 and "ZeroDivisionError" in hist[0]["outputs"]["ex_data"]
    assert admin.get(f"/api/v1/nodes/{act}/histories", params={"short": True}).json()[0].keys() >= {"loop"}
    assert admin.get(f"/api/v1/nodes/{act}/execution-data").json()["outputs"]["result"] == 2.0


def test_unknown_ids_get_404(admin: httpx.Client) -> None:
    for path in ("/api/v1/pipelines/nope", "/api/v1/pipelines/nope/tree", "/api/v1/pipelines/nope/debug",
                 "/api/v1/nodes/nope", "/api/v1/nodes/nope/state", "/api/v1/nodes/nope/execution-data",
                 "/api/v1/nodes/nope/data", "/api/v1/nodes/nope/histories", "/api/v1/nodes/nope/logs"):
        res = admin.get(path)
        assert res.status_code == 404, path
        assert "nope" in res.json()["detail"]
    for op, body in (("retry", {}), ("skip", None), ("retry-subprocess", None), ("forced-fail", {}),
                     ("pause", None), ("resume", None), ("callback", {"data": {}}),
                     ("skip-exclusive-gateway", {"flow_id": "f"}),
                     ("skip-conditional-parallel-gateway", {"flow_ids": ["f"], "converge_gateway_id": "c"})):
        res = admin.post(f"/api/v1/nodes/nope/{op}", json=body)
        assert res.status_code == 404, (op, res.text)
    for op in ("pause", "resume", "revoke"):
        assert admin.post(f"/api/v1/pipelines/nope/{op}").status_code == 404, op
    assert admin.post("/api/v1/pipelines/nope/context", json={"context_values": {}}).status_code == 404


def test_a_node_not_reached_yet_is_a_404_saying_so_with_empty_histories_and_logs(
        served: Any, admin: httpx.Client) -> None:  # noqa: F811
    tree = showcase_tree()
    submit(admin, tree)
    served.wait_state(node_id(tree, "approve"), "RUNNING")
    end = tree["end_event"]["id"]  # after the join, which waits for "approve"
    for path in (f"/api/v1/nodes/{end}", f"/api/v1/nodes/{end}/data"):
        res = admin.get(path)
        assert res.status_code == 404, path
        assert f"node {end} has not been reached yet (it has no state)" in res.json()["detail"], path
    assert admin.get(f"/api/v1/nodes/{end}/histories").json() == []
    logs = admin.get(f"/api/v1/nodes/{end}/logs")
    assert logs.status_code == 200 and logs.text == ""
    assert admin.get(f"/api/v1/nodes/{node_id(tree, 'approve')}").json()["state"]["state"] == "RUNNING"


def test_component_catalogue_has_formats(admin: httpx.Client) -> None:
    items = {c["code"]: c for c in admin.get("/api/v1/components").json()}
    divide = items["web_divide"]
    assert divide["inputs_format"][0]["key"] == "divisor"
    assert divide["inputs_format"][0]["schema"]["type"] == "int"
    assert any(o["key"] == "result" for o in divide["outputs_format"])
    assert items["web_wait"]["callback"] is True and items["web_divide"]["callback"] is False


# -- control ------------------------------------------------------------------------------------


def test_every_control_operation(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    tree = showcase_tree()
    root = submit(admin, tree)
    wait = node_id(tree, "approve")
    served.wait_state(wait, "RUNNING")
    # refused commands are 409 with the engine's reason, and change nothing
    res = admin.post(f"/api/v1/nodes/{wait}/retry", json={})
    assert res.status_code == 409 and "RUNNING" in res.json()["detail"]
    assert admin.post(f"/api/v1/nodes/{wait}/skip").status_code == 409
    assert admin.post(f"/api/v1/nodes/{wait}/resume").status_code == 409
    assert admin.post(f"/api/v1/nodes/{wait}/retry-subprocess").status_code == 409
    assert admin.post(f"/api/v1/nodes/{wait}/pause").status_code == 409
    assert admin.post(f"/api/v1/nodes/{wait}/skip-exclusive-gateway", json={"flow_id": "x"}).status_code == 409
    assert admin.post(f"/api/v1/nodes/{wait}/skip-conditional-parallel-gateway",
                      json={"flow_ids": ["x"], "converge_gateway_id": "y"}).status_code == 409
    assert admin.post(f"/api/v1/nodes/{wait}/callback", json={"version": "old", "data": {}}).status_code == 409
    assert admin.post(f"/api/v1/pipelines/{root}/resume").status_code == 409
    unknown_key = admin.post(f"/api/v1/pipelines/{root}/context", json={"context_values": {"${nope}": 1}})
    assert unknown_key.status_code == 200 and not unknown_key.json()["data"]  # only existing keys change
    assert admin.post(f"/api/v1/pipelines/{root}/context", json={"context_values": 5}).status_code == 422
    assert admin.post(f"/api/v1/nodes/{wait}/retry", json={"inputs": 5}).status_code == 422
    assert served.state(wait) == "RUNNING"

    assert admin.post(f"/api/v1/pipelines/{root}/pause").status_code == 200
    served.wait_state(root, "SUSPENDED")
    assert admin.post(f"/api/v1/pipelines/{root}/resume").status_code == 200
    served.wait_state(root, "RUNNING")
    assert admin.post(f"/api/v1/pipelines/{root}/context", json={"context_values": {}}).status_code == 200
    assert admin.post(f"/api/v1/nodes/{wait}/callback", json={"data": {"approved": True}}).status_code == 200
    served.wait_state(root, "FINISHED")
    assert api.get_execution_data_outputs(served.runtime, wait).data["got"] == {"approved": True}

    # forced fail, then skip
    tree = divide_tree(1, wait=True)
    root = submit(admin, tree)
    wait = node_id(tree, "approve")
    served.wait_state(wait, "RUNNING")
    # Over MAX_EX_DATA_CHARS (lowered here: the service takes 64 KiB bodies): cut as every failure text.
    from culm.model import limits

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(limits, "MAX_EX_DATA_CHARS", 1_000)
        assert admin.post(f"/api/v1/nodes/{wait}/forced-fail", json={"ex_data": "stop " * 10_000}).status_code == 200
    served.wait_state(wait, "FAILED")
    stored = api.get_execution_data_outputs(served.runtime, wait).data["ex_data"]
    assert len(stored) <= 1_000 and stored.startswith("stop stop") and "50,000 characters" in stored, stored
    assert admin.post(f"/api/v1/nodes/{wait}/forced-fail", json={}).status_code == 409
    assert admin.post(f"/api/v1/nodes/{wait}/skip").status_code == 200
    served.wait_state(root, "FINISHED")

    # a breakpoint before a node, then resumed
    tree = divide_tree(1, wait=True)
    wait = node_id(tree, "approve")
    submit_paused = admin.post("/api/v1/pipelines", json={"tree": tree})
    assert submit_paused.status_code == 201
    served.wait_state(wait, "RUNNING")
    assert admin.post(f"/api/v1/pipelines/{tree['id']}/revoke").status_code == 200
    served.wait_state(tree["id"], "REVOKED")
    assert admin.post(f"/api/v1/pipelines/{tree['id']}/pause").status_code == 409
    assert admin.post(f"/api/v1/pipelines/{tree['id']}/revoke").status_code == 409


def test_node_outputs_and_loop_times(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    tree = divide_tree(0)
    root = submit(admin, tree)
    divide = node_id(tree, "divide")
    served.wait_state(divide, "FAILED")
    res = admin.post(f"/api/v1/nodes/{divide}/outputs", json={"context_values": {"${quotient}": 0}})
    assert res.status_code == 200 and res.json()["data"] == []  # no such context value: outputs only
    assert api.get_execution_data_outputs(served.runtime, divide).data["quotient"] == 0
    no_loop = admin.post(f"/api/v1/nodes/{divide}/loop-times", json={"loop_times": 2})
    assert no_loop.status_code == 409 and "loop_config" in no_loop.json()["detail"]
    assert admin.post("/api/v1/nodes/nope/outputs", json={"context_values": {}}).status_code == 404
    assert admin.post("/api/v1/nodes/nope/loop-times", json={"loop_times": 1}).status_code == 404
    assert admin.post(f"/api/v1/nodes/{divide}/skip").status_code == 200
    served.wait_state(root, "FINISHED")
    late = admin.post(f"/api/v1/nodes/{divide}/outputs", json={"context_values": {}})
    assert late.status_code == 409 and "FINISHED" in late.json()["detail"]

    looped = divide_tree(1)
    divide = node_id(looped, "divide")
    looped["activities"][divide]["loop_config"] = {"enable": True, "loop_times": 1}
    root = submit(admin, looped)
    served.wait_state(root, "FINISHED")
    assert admin.post(f"/api/v1/nodes/{divide}/loop-times", json={"loop_times": 3}).status_code == 200
    assert admin.post(f"/api/v1/nodes/{divide}/loop-times", json={"loop_times": -1}).status_code == 422


def test_failed_gateways_and_subprocess_are_skipped_and_retried(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    tree = failing_gateways_tree()
    root = submit(admin, tree)
    exg, cpg, sub = (node_id(tree, n) for n in ("exclusive", "conditional", "subprocess"))
    for node in (exg, cpg, sub):
        served.wait_state(node, "FAILED")
    # the stored tree names each conditional parallel gateway's converge gateway
    stored = admin.get(f"/api/v1/pipelines/{root}/tree").json()
    converge = admin.get(f"/api/v1/nodes/{cpg}").json()["node"].get("converge_gateway_id") or \
        stored["gateways"][cpg].get("converge_gateway_id")
    exg_flow = tree["gateways"][exg]["outgoing"][0]
    cpg_flows = tree["gateways"][cpg]["outgoing"]
    assert admin.post(f"/api/v1/nodes/{exg}/skip-exclusive-gateway", json={"flow_id": "nope"}).status_code == 409
    assert served.state(exg) == "FAILED"
    assert admin.post(f"/api/v1/nodes/{exg}/skip-exclusive-gateway", json={"flow_id": exg_flow}).status_code == 200
    res = admin.post(f"/api/v1/nodes/{cpg}/skip-conditional-parallel-gateway",
                     json={"flow_ids": cpg_flows, "converge_gateway_id": converge})
    assert res.status_code == 200, res.text
    assert admin.post(f"/api/v1/nodes/{sub}/retry-subprocess").status_code == 200
    served.wait_state(exg, "FINISHED")
    served.wait_state(cpg, "FINISHED")
    served.wait_state(sub, "FAILED")  # the lazy variable still explodes
    assert admin.post(f"/api/v1/nodes/{sub}/skip").status_code in (200, 409)


def test_breakpoint_pause_and_resume(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    # the breakpoint must exist before the process reaches the node: set it on a node after one
    # that failed
    first = divide_tree(0, wait=True)
    target = node_id(first, "approve")
    submit(admin, first)
    served.wait_state(node_id(first, "divide"), "FAILED")
    assert admin.post(f"/api/v1/nodes/{target}/pause").status_code == 200
    assert served.state(target) == "SUSPENDED"
    assert admin.post(f"/api/v1/nodes/{node_id(first, 'divide')}/retry", json={"inputs": {"divisor": 1}}).status_code == 200
    served.wait_state(node_id(first, "divide"), "FINISHED")
    assert served.state(target) == "SUSPENDED"
    assert admin.post(f"/api/v1/nodes/{target}/resume").status_code == 200
    served.wait_state(target, "RUNNING")
    assert admin.post(f"/api/v1/nodes/{target}/callback", json={"data": {}}).status_code == 200
    served.wait_state(first["id"], "FINISHED")


def test_preview_renders_inputs(admin: httpx.Client) -> None:
    tree = divide_tree(7)
    res = admin.post("/api/v1/preview", json={"tree": tree, "node_id": node_id(tree, "divide")})
    assert res.status_code == 200 and res.json()["divisor"] == 7
    unknown = admin.post("/api/v1/preview", json={"tree": tree, "node_id": "nope"})
    assert unknown.status_code in (400, 404) and "nope" in unknown.json()["detail"], unknown.text
    assert admin.post("/api/v1/preview", json={"tree": {}, "node_id": "nope"}).status_code == 422
    assert admin.post("/api/v1/preview", json={"tree": tree}).status_code == 422


def test_a_storm_of_previews_leaves_the_service_responsive(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    """A preview may render for 10 s on a thread of the server's pool (40, shared by every request):
    60 at once held them all, and the console, states and commands waited. Past 4 at once a
    preview is now answered 429 at once, with Retry-After; the rest of the service answers."""
    import web_components

    tree = divide_tree(7)
    act = node_id(tree, "divide")
    tree["activities"][act]["component"]["inputs"]["divisor"] = {"type": "splice", "value": "${slow}"}
    tree["data"]["inputs"]["${slow}"] = {"type": "lazy", "custom_type": "web_lazy_slow", "value": 60}
    root = submit(admin, divide_tree(4))
    web_components.SLOW_RELEASE.clear()
    web_components.SLOW_STARTED.clear()

    def one_preview(_: int) -> httpx.Response:
        with client(served, "operator", timeout=90) as c:
            return c.post("/api/v1/preview", json={"tree": tree, "node_id": act})

    pool = ThreadPoolExecutor(60)
    try:
        storm = [pool.submit(one_preview, i) for i in range(60)]
        wait_until(lambda: sum(f.done() for f in storm) == 56, 60, what="56 previews to be refused")
        assert len(web_components.SLOW_STARTED) == 4  # the 4 held still hold their threads
        with client(served, "viewer", timeout=5) as viewer:  # a pool held by previews answered none of these
            for path in ("/api/v1/pipelines", f"/api/v1/pipelines/{root}", "/api/v1/me", "/"):
                assert viewer.get(path).status_code == 200, path
        with client(served, "operator", timeout=5) as operator:
            assert operator.post(f"/api/v1/pipelines/{root}/pause").status_code in (200, 409)
        refused = [f.result() for f in storm if f.done()]
        assert all(r.status_code == 429 for r in refused), {r.status_code for r in refused}
        assert refused[0].headers["Retry-After"] == "2"
        assert refused[0].json()["detail"] == ("too many previews: 4 are being rendered, the most this server renders "
                                               "at once (each may take up to 10 s); try again in 2 s")
    finally:
        web_components.SLOW_RELEASE.set()
        pool.shutdown(wait=True)
    held = [f.result() for f in storm if f.result().status_code != 429]
    assert len(held) == 4 and all(r.status_code == 200 and r.json()["divisor"] == "slow" for r in held)
    assert admin.post("/api/v1/preview", json={"tree": tree, "node_id": act}).status_code == 200  # slots given back


# -- live updates and metrics ------------------------------------------------------------------


def test_server_sent_events_follow_a_pipeline(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    tree = divide_tree(3, wait=True)
    wait = node_id(tree, "approve")
    got: list[dict] = []
    ready = threading.Event()

    def listen() -> None:
        with client(served, "viewer", timeout=httpx.Timeout(30, read=30)) as viewer, viewer.stream(
                "GET", "/api/v1/events", params={"root_id": tree["id"]}) as res:
            assert res.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in res.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                    ready.set()
                elif line.startswith("data: ") and event == "state":
                    got.append(json.loads(line[6:]))
                    if got[-1]["node_id"] == tree["id"] and got[-1]["to_state"] == "FINISHED":
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert ready.wait(10)
    submit(admin, tree)
    wait_until(lambda: any(c["node_id"] == wait and c["to_state"] == "RUNNING" for c in got), 20, 0.05,
               what="the RUNNING event of the waiting node")
    admin.post(f"/api/v1/nodes/{wait}/callback", json={"data": {}})
    listener.join(30)
    assert not listener.is_alive()
    assert got[-1]["to_state"] == "FINISHED"
    assert {c["root_id"] for c in got} == {tree["id"]}


def test_metrics_in_prometheus_format(served: Any, admin: httpx.Client) -> None:  # noqa: F811
    root = submit(admin, divide_tree(0))
    wait_until(lambda: "web_divide" in admin.get("/metrics").text, 20, 0.05, what="metrics of web_divide")
    del root
    text = admin.get("/metrics").text
    assert re.search(r'culm_node_executions_total\{component="web_divide",hostname="[^"]+",kind="execute",'
                     r'result="failure"\} [1-9]', text)
    assert 'engine_execute_exception_count_total{hostname=' in text or "engine_execute_exception_count{" in text
    for name in ("engine_node_execute_time_bucket", "culm_queue_depth", "culm_outbox_lag_seconds",
                 "engine_running_processes", "culm_engine_step_seconds_bucket", "culm_web_sse_clients",
                 "culm_callbacks_total", "culm_state_changes_total"):
        assert name in text, name
    assert re.search(r'culm_abandoned_threads\{hostname="[^"]+"\} 0\.0', text)


# -- the schema ---------------------------------------------------------------------------------


def _operations(schema: dict) -> list[tuple[str, str, dict]]:
    return [(method.upper(), re.sub(r"\{[^}]+\}", "nope", path), op)
            for path, ops in schema["paths"].items() for method, op in ops.items()]


def test_every_endpoint_refuses_missing_tokens_low_roles_bad_and_oversized_bodies(served: Any) -> None:  # noqa: F811
    schema = client(served).get("/api/openapi.json").json()
    with client(served, None) as anon, client(served, "viewer") as viewer, client(served, "operator") as operator, \
            client(served, "admin") as admin:
        before = admin.get("/api/v1/pipelines").json()["total"]
        for method, path, op in _operations(schema):
            body = {} if "requestBody" in op else None
            res = anon.request(method, path, json=body)
            assert res.status_code == 401, (method, path)
            if "403" in op["responses"]:
                low = operator if path.startswith("/api/v1/tokens") else viewer
                res = low.request(method, path, json=body)
                assert res.status_code == 403, (method, path)
                assert "role" in res.json()["detail"]
            if "requestBody" in op:
                big = admin.request(method, path, content=b"{" + b" " * (65 * 1024) + b"}",
                                    headers={"Content-Type": "application/json"})
                assert big.status_code == 413, (method, path)
                wrong = admin.request(method, path, json=["not", "an", "object"])
                assert wrong.status_code == 422, (method, path)
        assert admin.get("/api/v1/pipelines").json()["total"] == before


def test_openapi_schema_is_valid_and_every_documented_answer_was_exercised(admin: httpx.Client) -> None:
    schema = admin.get("/api/openapi.json").json()
    validate(schema)
    missing = []
    for path, ops in schema["paths"].items():
        pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")
        for method, op in ops.items():
            for code in op["responses"]:
                hit = any(m == method.upper() and pattern.match(p) and str(s) == code for m, p, s in SEEN)
                if not hit:
                    missing.append(f"{method.upper()} {path} {code}")
    assert not missing, "documented answers never exercised: " + ", ".join(missing)
