"""A component's log lines cannot forge or steer the process log, on every runtime.

Found probing (session 14): a component's ``self.logger`` lines go to the process's
``culm.component`` logger as well as to the node's stored log. A line holding
``"\\x1b]0;PWNED\\x07\\x1b[2J\\nFAKE ... ERROR forged line"`` (text a component logs about its
input, say) reached a ``culm worker``'s log raw: the escapes acted on the terminal of whoever read
it, and the newline started a line that read as one of the worker's own records. Now the process
log gets the text with control characters escaped (``\\u001b``) and each further line indented;
the node's stored log (``api.get_node_logs``, shown escaped by ``culm logs``) keeps it as written.
"""

from __future__ import annotations

import logging

import pytest
from engine_fixtures import EMBEDDED, finish, outputs
from support import wait_until

from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree

pytestmark = pytest.mark.timeout(120)

EVIL = "\x1b]0;PWNED\x07\x1b[2J\nFAKE 2026-12-06 10:00:00 ERROR culm.core forged line"
SHOWN = "\\u001b]0;PWNED\\u0007\\u001b[2J\n    FAKE 2026-12-06 10:00:00 ERROR culm.core forged line"


def one(code: str, **inputs: object) -> tuple[dict, str]:
    start, act = EmptyStartEvent(), ServiceActivity(component_code=code)
    for key, value in inputs.items():
        setattr(act.component.inputs, key, Var(type=Var.PLAIN, value=value))
    start.extend(act).extend(EmptyEndEvent())
    return build_tree(start), act.id


def test_log_lines_reach_the_process_log_escaped_and_indented(runtime, request, caplog):
    name = request.node.callspec.params["runtime"]
    tree, act_id = one("t_log", who=EVIL)
    with caplog.at_level(logging.INFO, logger="culm.component"):
        finish(runtime, tree, timeout=60)
    assert api.get_node_logs(runtime, act_id).data.startswith(f"[INFO] hello {EVIL}\n")  # stored as written
    if name in EMBEDDED:
        text = "\n".join(r.getMessage() for r in caplog.records if r.name == "culm.component")
    else:
        backend = request.getfixturevalue("backend_pool").get(name)

        def worker_logs() -> str:
            return "\n".join(backend.worker_log(i) for i in range(len(backend.workers)) if backend.workers[i])

        wait_until(lambda: act_id in worker_logs(), 30, 0.1, what="the worker to log the line")
        text = worker_logs()
    ours = [line for line in text.splitlines() if "PWNED" in line or "forged line" in line]
    assert ours and all("\x1b" not in line and "\x07" not in line for line in ours), ours
    assert f"[{act_id}] hello {SHOWN}" in text
    assert not any(line.startswith("FAKE") for line in text.splitlines())

    healthy, healthy_id = one("t_echo", x="fine")
    finish(runtime, healthy, timeout=60)
    assert outputs(runtime, healthy_id)["out"] == "fine!"
