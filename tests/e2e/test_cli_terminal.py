"""What `culm` prints cannot steer the terminal it prints to.

Found probing (session 14): a pipeline's or node's name, a component's failure text and its log
lines reached the terminal raw through `culm run`, `status`, `list`, `logs` and `watch`. A name
holding ``ESC ]0;...`` rewrote the window's title, ``ESC [2J`` cleared the screen, ``\\r`` and
cursor moves hid lines, an OSC 8 link showed one target and opened another, and ``\\x9b`` (the
one-byte CSI) started a sequence too. Each such character is now printed as its ``\\uXXXX``
escape; rich's own colours still pass, and ``--json`` still decodes to the stored text.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import culm

pytestmark = pytest.mark.timeout(180)

EVIL = "\x1b]0;PWNED\x07\x1b[2J\x1b]8;;http://evil.example/\x07click\x1b]8;;\x07\x9b31m\u202egnp.exe\r\x08X"
# What may never reach the terminal raw: C0 controls but tab and newline, DEL, C1, bidi controls.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # rich's own SGR codes, allowed when colour is forced

COMPONENT = f'''
from culm.components import Component, Service

EVIL = {EVIL!r}


class EvilService(Service):
    def execute(self, data, parent_data):
        self.logger.info("log line " + EVIL)
        raise RuntimeError("failure text " + EVIL)


class EvilComponent(Component):
    code = "cli_test_evil"
    name = "evil"
    bound_service = EvilService
'''


def evil_tree(tmp_path: Path) -> Path:
    (tmp_path / "evil.py").write_text(COMPONENT)
    tree = json.loads((Path(__file__).resolve().parents[2] / "examples" / "tree.json").read_text())
    tree["id"] = "pipeline_cli_evil"
    tree["name"] = "pipe " + EVIL
    tree["activities"]["node_done"]["component"]["code"] = "cli_test_evil"
    tree["activities"]["node_done"]["name"] = "act " + EVIL
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(tree))
    return path


def assert_inert(out: subprocess.CompletedProcess, *, colour: bool = False) -> str:
    text = out.stdout + out.stderr
    plain = COLOUR.sub("", text) if colour else text
    assert not RAW.search(plain), [m.group() for m in RAW.finditer(plain)][:5]
    return plain


def test_names_failures_and_log_lines_are_escaped_on_every_command(tmp_path: Path) -> None:
    tree = evil_tree(tmp_path)
    run = culm(tmp_path, "run", str(tree), "--import", "evil")
    assert run.returncode == 1, run.stdout + run.stderr
    text = assert_inert(run)
    assert "act \\u001b]0;PWNED" in text and "failure text \\u001b]0;PWNED" in text

    for args in (["status", "pipeline_cli_evil"], ["status", "node_done"], ["list"], ["logs", "node_done"],
                 ["watch", "pipeline_cli_evil"], ["status", "pipeline_cli_evil", "--outputs"]):
        out = culm(tmp_path, *args)
        assert out.returncode in (0, 1), (args, out.stdout + out.stderr)
        shown = assert_inert(out)
        assert "\\u001b]0;PWNED" in shown, (args, shown[:400])
    assert "\\u009b31m\\u202egnp.exe" in culm(tmp_path, "status", "node_done").stdout

    forced = culm(tmp_path, "status", "pipeline_cli_evil", env={"FORCE_COLOR": "1", "TERM": "xterm-256color"})
    assert COLOUR.search(forced.stdout), "rich's colours must still pass"
    assert_inert(forced, colour=True)


def test_json_output_still_decodes_to_the_stored_text(tmp_path: Path) -> None:
    assert culm(tmp_path, "run", str(evil_tree(tmp_path)), "--import", "evil").returncode == 1
    out = culm(tmp_path, "list", "--json")
    assert out.returncode == 0, out.stderr
    assert_inert(out)
    names = [item["name"] for item in json.loads(out.stdout)["items"]]
    assert names == ["pipe " + EVIL]


def test_a_refused_tree_quoting_its_names_is_escaped_too(tmp_path: Path) -> None:
    tree = json.loads(evil_tree(tmp_path).read_text())
    tree["activities"]["node_done"]["component"]["code"] = "no_such_component " + EVIL
    path = tmp_path / "refused.json"
    path.write_text(json.dumps(tree))
    out = culm(tmp_path, "validate", str(path))
    assert out.returncode == 2, out.stdout + out.stderr
    shown = assert_inert(out)
    assert "act \\u001b]0;PWNED" in shown and "no_such_component" in shown


def test_the_command_restores_the_streams_it_wrapped() -> None:
    from culm.cli import main

    before = sys.stdout, sys.stderr
    assert main(["validate", "/nonexistent/tree.json"]) == 2
    assert (sys.stdout, sys.stderr) == before


def test_long_names_are_cut_before_they_are_laid_out(tmp_path: Path) -> None:
    """20 names of 200,000 combining accents held `culm status` for 50 s of rich's layout."""
    import time

    from culm.cli import render
    from culm.cli.common import console

    tree = json.loads(evil_tree(tmp_path).read_text())
    tree["name"] = "p" + "\u0301" * 1_000_000
    tree["activities"]["node_done"]["name"] = "a" + "\u0301" * 200_000
    info = render.node_info(tree)
    name = info["node_done"][0]
    assert len(name) < render.MAX_NAME_SHOWN + 40 and name.endswith("(199,801 more characters)")
    entry = {"id": "node_done", "state": "FAILED", "children": {}}
    root = {"id": tree["id"], "state": "RUNNING", "children": {"node_done": entry}}
    started = time.process_time()
    console().print(render.state_tree(root, info, {}))
    assert time.process_time() - started < 2
