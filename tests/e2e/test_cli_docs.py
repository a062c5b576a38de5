"""The operator sessions shown in README.md and docs/cli.md are real: each command runs, in order, and
prints the lines shown (times, dates and durations aside) with the exit code shown."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```console\n(.*?)^```", re.S | re.M)
VOLATILE = [
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"), "<date>"),
    (re.compile(r"\b\d\d:\d\d:\d\d\.\d{3}\b"), "<time>"),
    (re.compile(r"\b\d+(\.\d+)?s\b|\b\d+m\d\ds\b"), "<span>"),
]


def sessions() -> list[tuple[str, str]]:
    """Console blocks that show exit codes: the sessions, by file."""
    found = []
    for path in (ROOT / "README.md", ROOT / "docs" / "cli.md"):
        for i, block in enumerate(BLOCK.findall(path.read_text(encoding="utf-8"))):
            if "[exit " in block:
                found.append((f"{path.name}#{i + 1}", block))
    return found


def steps(block: str) -> list[tuple[str, list[str], int]]:
    """(command, expected output lines, exit code) of each ``$ culm ...`` of a block."""
    result: list[tuple[str, list[str], int]] = []
    for chunk in block.split("$ ")[1:]:
        command, *lines = chunk.rstrip("\n").split("\n")
        code = int(lines.pop()[len("[exit "):-1])
        result.append((command, lines, code))
    return result


def normal(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        for pattern, mark in VOLATILE:
            line = pattern.sub(mark, line)
        out.append(re.sub(r"\s+", " ", line).strip())
    return out


def test_the_docs_show_sessions() -> None:
    assert {where.split("#")[0] for where, _ in sessions()} == {"README.md", "cli.md"}


@pytest.mark.parametrize(("where", "block"), sessions(), ids=[w for w, _ in sessions()])
def test_session_runs_as_shown(where: str, block: str, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CULM_")}
    for command, expected, code in steps(block):
        argv = shlex.split(command)
        assert argv[0] == "culm", command
        out = subprocess.run([sys.executable, "-m", "culm", *argv[1:]], cwd=tmp_path, env=env, text=True,
                             capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        assert out.returncode == code, f"{where}: $ {command}\n{out.stdout}{out.stderr}"
        assert normal(out.stdout.splitlines()) == normal(expected), f"{where}: $ {command}\n{out.stdout}"


def test_every_command_is_in_the_command_tables() -> None:
    """A new user's trial: README's table of commands left out `set-outputs` and `loop-times`. Each
    command of `culm` is named in README's table and in docs/cli.md's."""
    from culm.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices  # noqa: SLF001
    for path in (ROOT / "README.md", ROOT / "docs" / "cli.md"):
        table = "\n".join(line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("| `culm"))
        missing = [name for name in commands if name != "show" and not re.search(
            rf"`(culm )?{re.escape(name)}[` ]|/`?{re.escape(name)}`? ", table)]
        assert missing == [], f"{path.name}: {missing}"
