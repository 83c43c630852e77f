"""The circuit breaker's state machine, driven by an injected clock (no sleeping)."""

from __future__ import annotations

import threading

import pytest

from scheduler.crawler.breaker import CircuitBreaker, State


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def changes() -> list[tuple[State, State]]:
    return []


@pytest.fixture
def breaker(clock: FakeClock, changes: list[tuple[State, State]]) -> CircuitBreaker:
    return CircuitBreaker(
        failure_threshold=3,
        open_seconds=10,
        clock=clock,
        on_change=lambda old, new: changes.append((old, new)),
    )


def state(breaker: CircuitBreaker) -> State:
    # a function, not the property, so mypy does not narrow the state across calls that change it
    return breaker.state


def open_it(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        breaker.record_failure()
    assert state(breaker) == "open"


def test_defaults() -> None:
    breaker = CircuitBreaker()
    assert (breaker.failure_threshold, breaker.open_seconds, breaker.state) == (5, 10.0, "closed")


def test_opens_after_threshold_consecutive_failures(
    breaker: CircuitBreaker, changes: list[tuple[State, State]]
) -> None:
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) == "closed" and breaker.allow()
    breaker.record_failure()
    assert state(breaker) == "open"
    assert not breaker.allow()
    assert changes == [("closed", "open")]


def test_a_success_resets_the_count(breaker: CircuitBreaker) -> None:
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) == "closed"


def test_half_open_after_open_seconds_lets_exactly_one_probe(
    breaker: CircuitBreaker, clock: FakeClock, changes: list[tuple[State, State]]
) -> None:
    open_it(breaker)
    clock.advance(9.99)
    assert state(breaker) == "open" and not breaker.allow()
    clock.advance(0.01)
    assert state(breaker) == "half_open"
    assert breaker.allow()
    assert not breaker.allow()
    assert not breaker.allow()
    assert changes == [("closed", "open"), ("open", "half_open")]


def test_probe_success_closes(
    breaker: CircuitBreaker, clock: FakeClock, changes: list[tuple[State, State]]
) -> None:
    open_it(breaker)
    clock.advance(10)
    assert breaker.allow()
    breaker.record_success()
    assert state(breaker) == "closed"
    assert breaker.allow() and breaker.allow()
    assert changes[-1] == ("half_open", "closed")
    # a fresh count after closing: one failure does not re-open
    breaker.record_failure()
    assert state(breaker) == "closed"


def test_probe_failure_reopens_for_another_period(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_it(breaker)
    clock.advance(10)
    assert breaker.allow()
    clock.advance(3)
    breaker.record_failure()
    assert state(breaker) == "open" and not breaker.allow()
    clock.advance(9.9)  # the period restarts at the probe's failure, not at the first opening
    assert state(breaker) == "open"
    clock.advance(0.1)
    assert state(breaker) == "half_open" and breaker.allow()


def test_a_lost_probe_does_not_wedge_half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_it(breaker)
    clock.advance(10)
    assert breaker.allow()
    clock.advance(5)
    assert not breaker.allow()
    clock.advance(5)
    assert breaker.allow()  # the first probe never reported; a second one may go


def test_late_success_while_open_keeps_it_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_it(breaker)
    breaker.record_success()
    assert state(breaker) == "open"
    clock.advance(10)
    assert state(breaker) == "half_open"


def test_force_open_from_closed_and_restarts_the_period(
    breaker: CircuitBreaker, clock: FakeClock, changes: list[tuple[State, State]]
) -> None:
    breaker.force_open()
    assert state(breaker) == "open" and not breaker.allow()
    clock.advance(8)
    breaker.force_open()  # health still NOT_SERVING
    clock.advance(8)
    assert state(breaker) == "open"
    clock.advance(2)
    assert state(breaker) == "half_open"
    assert changes == [("closed", "open"), ("open", "half_open")]


def test_on_change_may_read_the_breaker(clock: FakeClock) -> None:
    seen: list[str] = []
    breaker: CircuitBreaker

    def on_change(old: State, new: State) -> None:
        seen.append(f"{old}->{new}:{breaker.state}")  # would deadlock if called under the lock

    breaker = CircuitBreaker(failure_threshold=1, open_seconds=1, clock=clock, on_change=on_change)
    breaker.record_failure()
    assert seen == ["closed->open:open"]


def test_only_one_probe_among_many_threads(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_it(breaker)
    clock.advance(10)
    barrier = threading.Barrier(16)
    results: list[bool] = []
    lock = threading.Lock()

    def contend() -> None:
        barrier.wait()
        allowed = breaker.allow()
        with lock:
            results.append(allowed)

    threads = [threading.Thread(target=contend) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 15 + [True]


@pytest.mark.parametrize("kwargs", [{"failure_threshold": 0}, {"open_seconds": -1}])
def test_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]
