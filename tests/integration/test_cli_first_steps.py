"""A new user's first steps with ``culm`` (session 16's trial): ``culm`` alone shows what it can do,
each command's ``--help`` says what the command does (with examples for the common ones), a
mistyped command is one short line, the failed-node hint names the node so that it can be pasted,
and a command that publishes nothing imports no Celery, kombu or redis (a third of a second each
time on this machine: ``python -X importtime -m culm ...``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from backends import REPO

pytestmark = pytest.mark.timeout(180)

EXAMPLES = REPO / "examples"
BROKER = "redis://127.0.0.1:6379/0"


def _run(cwd: Path, argv: list[str], env: dict[str, str] | None) -> subprocess.CompletedProcess:
    full = dict(os.environ, CULM_DATABASE_URL=f"sqlite:///{cwd / 'first.db'}", **(env or {}))
    full.pop("CULM_IMPORTS", None)
    if "CULM_BROKER_URL" not in (env or {}):
        full.pop("CULM_BROKER_URL", None)
    out = subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=150,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in out.stderr, out.stderr
    return out


def culm(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return _run(cwd, ["-m", "culm", *args], env)


# Runs one culm command in this interpreter, then prints which of the Celery modules it imported.
IMPORTED = """
import sys
from culm.cli import main
code = main(sys.argv[1:])
print("exit", code, "imported", sorted(m for m in ("celery", "kombu", "redis") if m in sys.modules))
"""


def imported(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return str(_run(cwd, ["-c", IMPORTED, *args], env).stdout.strip().splitlines()[-1])


def test_culm_alone_shows_every_command_and_exits_2(tmp_path: Path) -> None:
    out = culm(tmp_path)
    assert out.returncode == 2
    assert "retry               run a failed node again" in out.stderr and "exit codes:" in out.stderr


def test_each_command_help_says_what_it_does_and_the_common_ones_show_examples(tmp_path: Path) -> None:
    retry = culm(tmp_path, "retry", "--help").stdout
    assert retry.split("\n\n")[1] == "run a failed node again"  # under the usage, before the options
    assert "examples:\n  culm retry charge_card\n" in retry
    assert "culm run examples/quickstart.py" in culm(tmp_path, "run", "--help").stdout
    assert (
        culm(tmp_path, "token", "list", "--help").stdout.split("\n\n")[1]
        == "list tokens (never their secrets)"
    )


def test_a_mistyped_command_is_one_short_line(tmp_path: Path) -> None:
    out = culm(tmp_path, "stauts", "x")
    assert out.returncode == 2
    assert (
        out.stderr.splitlines()[-1]
        == "culm: error: argument COMMAND: invalid choice: 'stauts'; did you mean 'status'?"
    )
    far = culm(tmp_path, "frobnicate")
    assert far.stderr.splitlines()[-1] == (
        "culm: error: argument COMMAND: invalid choice: 'frobnicate' (see `culm --help` for the choices)"
    )
    role = culm(tmp_path, "token", "create", "--role", "x")  # a few choices are still listed
    assert "(choose from 'viewer', 'operator', 'admin')" in role.stderr


def test_the_failed_node_hint_names_the_node_and_pasted_it_finishes_the_pipeline(tmp_path: Path) -> None:
    example = str(EXAMPLES / "operator_session.py")
    ran = culm(tmp_path, "run", example)
    assert ran.returncode == 1
    hint = next(line for line in ran.stdout.splitlines() if line.startswith("pipeline order_1234 is RUNNING"))
    assert f"retry with `culm retry charge_card [--data '{{...}}'] --import {example}`" in hint
    status = culm(tmp_path, "status", "order_1234").stdout.splitlines()[-1]
    assert "`culm skip charge_card --import MODULE`, or stop with `culm revoke order_1234`" in status
    pasted = hint.split("`")[1].replace("[--data '{...}']", "--data").split()
    pasted.insert(pasted.index("--data") + 1, '{"amount": 80}')
    retried = culm(tmp_path, *pasted[1:])
    assert retried.returncode == 0 and "pipeline order_1234 FINISHED" in retried.stdout, retried.stdout


def test_commands_that_publish_nothing_import_no_celery(tmp_path: Path) -> None:
    assert culm(tmp_path, "run", str(EXAMPLES / "quickstart.py")).returncode == 0
    listed = culm(tmp_path, "list", "--json").stdout
    root = listed.split('"id": "')[1].split('"')[0]
    # A read with a cluster's broker in the environment does not look at the broker.
    assert imported(tmp_path, "status", root, env={"CULM_BROKER_URL": BROKER}) == "exit 0 imported []"
    assert imported(tmp_path, "list", env={"CULM_BROKER_URL": BROKER}) == "exit 0 imported []"
    # A control command the engine refuses publishes nothing: no Celery app is built.
    assert imported(tmp_path, "pause", root, "--broker", BROKER) == "exit 5 imported []"
    assert imported(tmp_path, "retry", "nope", "--broker", BROKER) == "exit 3 imported []"
    # A broker URL of no kind Celery knows is still refused (kombu asked), before anything else.
    out = culm(tmp_path, "pause", root, "--broker", "nope://host")
    assert out.returncode == 2 and "No such transport: nope" in out.stderr


def test_a_publishing_runtime_builds_its_celery_app_on_first_use(tmp_path: Path) -> None:
    import culm as culm_package

    with culm_package.Runtime(f"sqlite:///{tmp_path / 'lazy.db'}", broker=BROKER) as rt:
        assert rt.dispatcher is not None and rt.dispatcher.made is False  # type: ignore[attr-defined]
        assert rt.dispatcher.prefix == "culm"  # type: ignore[attr-defined]  # asked of it: built
        assert rt.dispatcher.made is True  # type: ignore[attr-defined]
