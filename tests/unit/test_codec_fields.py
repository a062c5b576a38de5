"""A node's inputs or outputs too large together, each small: which go, found in one pass.

Found probing (session 23): an activity with 600,000 plain inputs (28 MB of tree JSON, stored
compressed) held the engine thread for good. Each input was small, their whole over
MAX_PAYLOAD_BYTES, and codec left out the largest one at a time, encoding all the others again after
each: the sizes it summed were the values' alone, so with the keys the rest stayed over the limit
and was encoded 600,000 times. The node stayed RUNNING, and every other pipeline of that engine
with it.
"""

from __future__ import annotations

import time

import pytest

from culm.errors import UnstorableValueError
from culm.model.limits import MAX_PAYLOAD_BYTES, payload_size
from culm.storage import codec

pytestmark = pytest.mark.timeout(60)


def test_many_small_fields_over_the_limit_together_are_left_out_in_one_pass() -> None:
    fields = {f"input_{i}": i for i in range(600_000)}  # about 12 MB with their keys
    start = time.process_time()
    with pytest.raises(UnstorableValueError) as caught:
        codec.dumps_fields(fields, "inputs")
    spent = time.process_time() - start
    exc = caught.value
    assert exc.field == "inputs" and 0 < len(exc.keys) < len(fields)
    left_out = set(exc.keys)
    rest = {key: value for key, value in fields.items() if key not in left_out}
    assert payload_size(codec.dumps(rest)) <= MAX_PAYLOAD_BYTES  # what is left is stored
    assert str(exc).startswith("inputs the store cannot hold: 'input_")
    assert f"and {len(left_out) - 20:,} more" in str(exc) and len(str(exc)) < 5_000
    assert spent < 20, f"{spent:.1f} s of CPU"


def test_the_largest_go_first_and_the_rest_is_kept() -> None:
    fields = {"big": "x" * 4_000_000, "bigger": "y" * 5_000_000, "small": "z"}
    with pytest.raises(UnstorableValueError) as caught:
        codec.dumps_fields(fields, "outputs")
    assert caught.value.keys == ["bigger"]
    assert str(caught.value) == ("outputs the store cannot hold: 'bigger': it takes 5,000,016 bytes once encoded, "
                                 "too many with the others (7,000,000 are stored in all)")
