"""`culm retry X` and the other control commands prefix an engine refusal with the command and
its target unless the message names the target already (culm.cli.control._accepted).

Found reviewing (session 17): the test was a substring one, so a refusal about node ``n10``
counted as naming ``n1`` and lost the prefix that says which node the command was for."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from culm.cli.common import CliError
from culm.cli.control import _accepted


def _message(message: str, target: str) -> str:
    with pytest.raises(CliError) as caught:
        _accepted(SimpleNamespace(result=False, message=message, data=None, exc=None), "retry", target)
    return str(caught.value)


@pytest.mark.parametrize(("message", "target", "prefixed"), [
    ("cannot retry node n10: it is RUNNING", "n1", True),
    ("cannot retry node xn1: it is RUNNING", "n1", True),
    ("cannot retry node n1-b: it is RUNNING", "n1", True),
    ("cannot retry node n1: it is RUNNING", "n1", False),
    ("node n1 is RUNNING.", "n1", False),
    ("cannot retry node a.b+c (it is RUNNING)", "a.b+c", False),
])
def test_the_prefix_is_dropped_only_when_the_message_names_the_target_as_a_whole(message, target, prefixed):
    text = _message(message, target)
    assert text.startswith(f"retry {target}: ") is prefixed, text
    assert message in text
