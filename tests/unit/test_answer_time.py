"""The time an answer of ``culm serve`` may wait unread (culm.web.connections): counted over the
answer's pauses, and from naught again once its client kept up for CAUGHT_UP_SECONDS.

Driven on the real protocol class with a clock, a loop and a transport of the test's own: the
timings (hours of a stream) cannot be waited for in a test."""

from __future__ import annotations

from typing import Any

import pytest

from culm.web import connections


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Handle:
    def __init__(self, at: float, fn: Any) -> None:
        self.at, self.fn, self.cancelled = at, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class _Loop:
    def __init__(self, clock: _Clock) -> None:
        self.clock, self.pending = clock, []

    def call_later(self, delay: float, fn: Any) -> _Handle:
        handle = _Handle(self.clock.now + delay, fn)
        self.pending.append(handle)
        return handle

    def run_due(self) -> None:
        for handle in [h for h in self.pending if h.at <= self.clock.now and not h.cancelled]:
            self.pending.remove(handle)
            handle.fn()


class _Transport:
    def __init__(self) -> None:
        self.aborted, self.unread = False, 100_000

    def get_write_buffer_size(self) -> int:
        return self.unread

    def get_extra_info(self, _name: str) -> None:
        return None

    def abort(self) -> None:
        self.aborted = True


class _Flow:
    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...


@pytest.fixture
def answer(monkeypatch):
    """One answer (a request-response cycle) on a connection whose client reads 100 kB a second."""
    clock = _Clock()
    monkeypatch.setattr(connections.time, "monotonic", clock)
    cls = connections.counted_protocol("", 30.0, 300.0)  # request timeout 30 s, answers 300 s unread
    protocol = cls.__new__(cls)
    protocol.flow, protocol.loop, protocol.transport, protocol.cycle = _Flow(), _Loop(clock), _Transport(), object()

    def behind_for(seconds: float, then_reads_for: float) -> bool:
        """The client is behind ``seconds`` (writing paused, reading all the while), then keeps up
        ``then_reads_for``; whether the connection was dropped."""
        protocol.pause_writing()
        for _ in range(int(seconds)):
            clock.now += 1.0
            protocol.transport.unread = max(0, protocol.transport.unread - 100_000)
            protocol.transport.unread += 100_000  # the answer goes on: the buffer stays full
            protocol.loop.run_due()
        if protocol.transport.aborted:
            return True
        protocol.resume_writing()
        clock.now += then_reads_for
        protocol.loop.run_due()
        return protocol.transport.aborted

    return behind_for


def test_a_stream_behind_in_its_bursts_and_read_as_it_comes_is_never_dropped(answer):
    # An hour and a half of a console's event stream: 1 s behind in each burst, 10 s kept up after.
    assert not any(answer(1, then_reads_for=10.0) for _ in range(500))


def test_an_answer_whose_client_never_keeps_up_is_dropped_at_its_time_in_all(answer):
    # A large answer read just too slowly: writing resumes for moments only between its pauses.
    pauses = 0
    while not answer(10, then_reads_for=0.01):
        pauses += 1
        assert pauses < 100, "an answer never read up was not dropped"
    assert 29 <= pauses <= 31  # 300 s in all, 10 s a pause
