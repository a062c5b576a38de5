"""culm's own loggers write nothing a tree or user code can use to forge a log line or steer the
terminal showing the log (culm._printable.InertRecords): messages, their arguments, tracebacks."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

from culm._printable import engine_logger

CULM = Path(__file__).resolve().parents[2] / "culm"
EVIL = "\x1b]0;PWNED\x07\u202e\nFAKE 2026-12-06 10:00:00,000 ERROR culm.engine: forged"


def test_every_logger_of_culms_own_is_made_by_engine_logger() -> None:
    plain = [f"{path.relative_to(CULM.parent)}:{n}" for path in CULM.rglob("*.py")
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if re.match(r"""\w+ = logging\.getLogger\(["']culm""", line)]
    assert plain == [], "make these with culm._printable.engine_logger"


def test_a_record_its_arguments_and_its_traceback_stay_one_record() -> None:
    logger = engine_logger("culm.test_engine_loggers")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    try:
        try:
            raise ValueError(EVIL)
        except ValueError:
            logger.exception("hook %s of %s raised", "pre_execute", EVIL)
        logger.warning("node %s waits", EVIL, stack_info=True)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    starts = [line for line in lines if not line.startswith("    ")]
    assert [line.split(" ", 2)[:2] for line in starts] == [["ERROR", "culm.test_engine_loggers:"],
                                                         ["WARNING", "culm.test_engine_loggers:"]], lines
    assert not any(c in stream.getvalue() for c in "\x1b\x07\u202e")
    assert "    ValueError: \\u001b]0;PWNED\\u0007\\u202e" in lines
    assert "    Traceback (most recent call last):" in lines and "    Stack (most recent call last):" in lines
    assert engine_logger("culm.test_engine_loggers").filters.count(logger.filters[0]) == 1  # added once
