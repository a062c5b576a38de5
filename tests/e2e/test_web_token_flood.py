"""A flood of wrong secrets for a known token id cannot take the web service down.

Found probing (session 14): a token's id is no secret (`culm token list` shows it, a viewer knows
their own), and each presented secret not verified before is hashed with scrypt (16 MiB, ~40 ms).
200 requests at once with a known id and wrong secrets were each hashed: the server's threads were
all busy hashing (a verified token's request took 18 s instead of milliseconds), it used 8.8 s of
CPU and peaked at 780 MB. The per-client throttle did not help: it is read before the failure is
counted, so requests sent together all pass it. Now at most ``MAX_CONCURRENT_CHECKS`` secrets are
hashed at once in a process; a request past that is answered 429 (``Retry-After: 1``) unhashed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from web_support import served  # noqa: F401 - fixture

from culm.web import tokens

pytestmark = pytest.mark.timeout(120)


def other_client(served: Any, token: str) -> httpx.Client:  # noqa: F811
    """A client from another loopback address than the flood's (the throttle is per address)."""
    return httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {token}"}, timeout=60,
                        transport=httpx.HTTPTransport(local_address="127.0.0.2"))


def test_wrong_secrets_sent_at_once_are_not_all_hashed_and_others_are_served(served: Any) -> None:  # noqa: F811
    viewer = served.tokens["viewer"]
    token_id = viewer.split("_")[1]
    with other_client(served, viewer) as good:
        assert good.get("/api/v1/me").status_code == 200  # verified once: never hashed again

    answers: list[httpx.Response] = []
    start = threading.Barrier(81)

    def attack() -> None:
        with httpx.Client(base_url=served.url, timeout=60,
                          headers={"Authorization": f"Bearer culm_{token_id}_not-the-secret"}) as bad:
            start.wait()
            answers.append(bad.get("/api/v1/me"))

    threads = [threading.Thread(target=attack) for _ in range(80)]
    for thread in threads:
        thread.start()
    start.wait()
    with other_client(served, viewer) as good:
        began = time.monotonic()
        assert good.get("/api/v1/me").status_code == 200
        assert time.monotonic() - began < 5  # 18 s before, behind 200 hashes
    for thread in threads:
        thread.join(60)

    codes = sorted({a.status_code for a in answers})
    assert codes == [401, 429], codes
    busy = [a for a in answers if a.status_code == 429]
    assert len(busy) > len(answers) // 2, f"{len(busy)} of {len(answers)} were turned away unhashed"
    assert busy[0].headers["Retry-After"] == "1"
    assert busy[0].json()["detail"] == "too many tokens are being checked at once: try again in a moment"
    assert tokens.MAX_CONCURRENT_CHECKS == 2

    # Every slot was given back: a token never verified before is hashed and accepted.
    fresh, _ = served.app.state.tokens.create("viewer", "after the flood")
    with other_client(served, fresh) as after:
        assert after.get("/api/v1/me").status_code == 200
