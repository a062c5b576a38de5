"""A component's log lines cannot forge or steer the process log, on every runtime.

Found probing (session 14): a component's ``self.logger`` lines go to the process's
``culm.component`` logger as well as to the node's stored log. A line holding
``"\\x1b]0;PWNED\\x07\\x1b[2J\\nFAKE ... ERROR forged line"`` (text a component logs about its
input, say) reached a ``culm worker``'s log raw: the escapes acted on the terminal of whoever read
it, and the newline started a line that read as one of the worker's own records. Now the process
log gets the text with control characters escaped (``\\u001b``) and each further line indented.

Session 15: the same for what culm's own loggers write (a hook's exception, whose traceback ends
with the message user code gave it), and for the node's log as every reader gets it
(``api.get_node_logs`` and ``get_node_log_page``, hence the REST endpoints, the console and
``culm logs``): the database keeps the line as written, the reads show it as the process log does.
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


def process_log(request, caplog, seen: str, mine=lambda record: True) -> str:
    """What this process (embedded: the records ``mine`` keeps, formatted) or the workers logged,
    once ``seen`` is in it."""
    if request.node.callspec.params["runtime"] in EMBEDDED:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        return "\n".join(handler.format(r) for r in caplog.records if mine(r))
    backend = request.getfixturevalue("backend_pool").get(request.node.callspec.params["runtime"])

    def worker_logs() -> str:
        return "\n".join(backend.worker_log(i) for i in range(len(backend.workers)) if backend.workers[i])

    wait_until(lambda: seen in worker_logs(), 30, 0.1, what="the workers to log it")
    return worker_logs()


def test_log_lines_reach_the_process_log_escaped_and_indented(runtime, request, caplog):
    tree, act_id = one("t_log", who=EVIL)
    with caplog.at_level(logging.INFO, logger="culm.component"):
        finish(runtime, tree, timeout=60)
    assert api.get_node_logs(runtime, act_id).data.startswith(f"[INFO] hello {SHOWN}\n")
    assert api.get_node_log_page(runtime, act_id, offset=0, limit=1).data["lines"] == [f"[INFO] hello {SHOWN}"]
    text = process_log(request, caplog, act_id, lambda r: r.name == "culm.component")
    ours = [line for line in text.splitlines() if "PWNED" in line or "forged line" in line]
    assert ours and all("\x1b" not in line and "\x07" not in line for line in ours), ours
    assert f"[{act_id}] hello {SHOWN}" in text
    assert not any(line.startswith("FAKE") for line in text.splitlines())

    healthy, healthy_id = one("t_echo", x="fine")
    finish(runtime, healthy, timeout=60)
    assert outputs(runtime, healthy_id)["out"] == "fine!"


def test_a_hooks_exception_reaches_the_process_log_escaped_and_indented(runtime, request, caplog):
    """A hook that raises is logged by ``culm.hooks`` with its traceback; the exception's message
    (user code's text) is escaped and indented with the whole traceback: nothing in it reads as
    a record of the log's own."""
    start, act = EmptyStartEvent(), ServiceActivity(component_code="t_hook")
    act.component.inputs.hook_raises = Var(type=Var.PLAIN, value=EVIL)
    start.extend(act).extend(EmptyEndEvent())
    with caplog.at_level(logging.ERROR, logger="culm.hooks"):
        finish(runtime, build_tree(start), timeout=60)
    text = process_log(request, caplog, "hook node_finish of HookService raised")
    assert "hook pre_execute of HookService raised" in text
    assert "    RuntimeError: hook pre_execute raised: \\u001b]0;PWNED\\u0007\\u001b[2J\n    FAKE 2026" in text
    assert "    Traceback (most recent call last):" in text
    assert "\x1b" not in text and "\x07" not in text
    # (A worker's log also holds what other tests' pipelines logged: look at this hook's lines only.)
    assert not any(line.startswith(("FAKE", "RuntimeError: hook ")) for line in text.splitlines())
