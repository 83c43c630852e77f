"""The runner's failure rules, directly: which failures are retried and which dead-lettered, how many
retries a task gets, the half-open probe, the back-off delays, and what each cancellation reason ends as;
then ``TaskRunner`` (wired as ``Daemon`` wires it) against the real fake crawler."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
import redis

from crawler_stub import CrawlerStub
from crawler_stub.service import source_id
from scheduler._proto import crawler_pb2
from scheduler.config.load import load_settings
from scheduler.daemon.app import Daemon
from scheduler.daemon.leases import Running
from scheduler.daemon.outcomes import (
    DeadLetter,
    LeavePending,
    Retry,
    Skip,
    Success,
    after_failure,
    retry_delay,
)
from scheduler.devtools.redis_server import RedisServer
from scheduler.errors import CrawlerError
from scheduler.taskqueue import Producer, StreamMessage, TaskMessage, keys
from scheduler.taskqueue.message import parse_timestamp
from scheduler.tasks.registry import RedisTaskRegistry, TaskSpec
from tests.daemon_parts import counter, crawling, wired_daemons
from tests.e2e.support import wait_until

RULES = load_settings(
    env={"APP_MAX_RETRY": "3", "APP_RETRY_BACKOFF_BASE": "1s", "APP_RETRY_BACKOFF_MAX": "8s"}
)


def failure(code: str = "UNAVAILABLE", transient: bool = True, detail: str = "down") -> CrawlerError:
    return CrawlerError(code, detail, transient=transient)


# -- the rules as a table --------------------------------------------------------------------------------

# (retry of the failed run, transient, probe) → what it ends as: ("retry", counted, lowest, highest delay)
# or ("dead", reason category)
TABLE = [
    pytest.param(0, True, False, ("retry", True, 0.5, 1.0), id="transient-first-failure"),
    pytest.param(1, True, False, ("retry", True, 1.0, 2.0), id="transient-second"),
    pytest.param(2, True, False, ("retry", True, 2.0, 4.0), id="transient-third"),
    pytest.param(3, True, False, ("dead", "max_retry"), id="transient-at-max_retry"),
    pytest.param(9, True, False, ("dead", "max_retry"), id="transient-past-max_retry"),
    pytest.param(0, False, False, ("dead", "permanent"), id="permanent-first-failure"),
    pytest.param(2, False, False, ("dead", "permanent"), id="permanent-later"),
    pytest.param(0, True, True, ("retry", False, 0.0, 0.0), id="probe-transient"),
    pytest.param(3, True, True, ("retry", False, 0.0, 0.0), id="probe-transient-at-max_retry"),
    pytest.param(0, False, True, ("dead", "permanent"), id="probe-permanent"),
]


@pytest.mark.parametrize(("retry", "transient", "probe", "expected"), TABLE)
def test_after_failure(retry: int, transient: bool, probe: bool, expected: tuple[object, ...]) -> None:
    code = "UNAVAILABLE" if transient else "INVALID_ARGUMENT"
    outcome = after_failure(RULES, retry, failure(code, transient), probe, 0.25)
    if expected[0] == "retry":
        _, counted, low, high = expected
        assert isinstance(outcome, Retry)
        assert (outcome.count_retry, outcome.code, outcome.error_text) == (counted, code, f"{code}: down")
        assert low <= outcome.delay_s <= high  # type: ignore[operator]
        assert outcome.duration_s == 0.25
    else:
        assert outcome == DeadLetter(f"{expected[1]}: {code}: down", f"{code}: down", code, 0.25)


def test_max_retry_zero_dead_letters_the_first_transient_failure() -> None:
    settings = load_settings(env={"APP_MAX_RETRY": "0"})
    outcome = after_failure(settings, 0, failure(), False, 1.0)
    assert outcome == DeadLetter("max_retry: UNAVAILABLE: down", "UNAVAILABLE: down", "UNAVAILABLE", 1.0)
    # a probe spends no retry, so even with none to spend it goes back
    assert after_failure(settings, 0, failure(), True, 1.0) == Retry(0.0, False, "UNAVAILABLE: down",
                                                                     "UNAVAILABLE", 1.0)  # fmt: skip


def test_a_task_gets_max_retry_requeues_then_its_dead_letter() -> None:
    """Run by run, as the retry count grows in the requeued message: 3 retries, the 4th failure ends it."""
    endings = [type(after_failure(RULES, retry, failure(), False, 0.0)).__name__ for retry in range(5)]
    assert endings == ["Retry", "Retry", "Retry", "DeadLetter", "DeadLetter"]


def test_error_text_is_cut_to_1000_characters() -> None:
    outcome = after_failure(RULES, 3, failure(detail="x" * 5000), False, 0.0)
    assert isinstance(outcome, DeadLetter)
    assert outcome.error_text == ("UNAVAILABLE: " + "x" * 5000)[:1000]
    assert outcome.reason == "max_retry: " + outcome.error_text


def test_retry_delays_double_from_the_base_and_are_capped_with_equal_jitter() -> None:
    for retry, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0), (60, 10.0)):
        delays = [retry_delay(retry, 1.0, 10.0) for _ in range(300)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling, retry
        assert max(delays) - min(delays) > ceiling / 4, retry  # jittered, not a constant
    assert max(retry_delay(0, 1.0, 10.0) for _ in range(100)) <= 1.0  # "retry 0" is the first retry
    assert retry_delay(5, 0.0, 10.0) == 0.0


def test_the_requeue_delay_is_the_next_retrys_back_off_capped_at_the_maximum() -> None:
    settings = load_settings(
        env={"APP_MAX_RETRY": "10", "APP_RETRY_BACKOFF_BASE": "1s", "APP_RETRY_BACKOFF_MAX": "3s"}
    )

    def delays(retry: int) -> list[float]:
        outcomes = [after_failure(settings, retry, failure(), False, 0.0) for _ in range(100)]
        return [o.delay_s for o in outcomes if isinstance(o, Retry)]

    assert all(0.5 <= d <= 1.0 for d in delays(0))
    assert all(1.0 <= d <= 2.0 for d in delays(1))
    assert all(1.5 <= d <= 3.0 for d in delays(2))  # 4 s capped at 3
    assert all(1.5 <= d <= 3.0 for d in delays(9))
    assert len(delays(9)) == 100


# -- TaskRunner against the fake crawler ------------------------------------------------------------------


@pytest.fixture
def wired(
    redis_server: RedisServer, r: redis.Redis, crawler_stub: CrawlerStub
) -> Iterator[Callable[..., Daemon]]:
    """A daemon's parts as ``Daemon`` wires them (not started); its crawler client connected."""
    with wired_daemons(
        redis_server.url, crawler_stub.address, connect=True, APP_CRAWLER_ATTEMPTS="1", APP_MAX_RETRY="3",
        APP_RETRY_BACKOFF_BASE="1s", APP_RETRY_BACKOFF_MAX="8s", APP_BREAKER_FAILURE_THRESHOLD="2",
    ) as make:  # fmt: skip
        yield lambda **env: make("runner", **env)


def execute(task_id: int, retry: int = 0, source: str = "periodic") -> StreamMessage:
    """An execute as the read loop hands it on (the runner itself reads nothing of the entry in Redis)."""
    task = TaskMessage(task_id, "execute", datetime.now(UTC), retry, source)
    return StreamMessage(f"{int(time.time() * 1000)}-0", task, task.encode().encode())


def read_one(daemon: Daemon, publish: Callable[[], str]) -> StreamMessage:
    """A real entry (its id is Redis' clock, which orders stops and re-enables)."""
    daemon.consumer.ensure_group()
    entry_id = publish()
    [msg] = [m for m in daemon.consumer.read(10, block_ms=100) if m.id == entry_id]
    return msg


def test_a_successful_crawl_is_a_success_with_the_crawlers_items(
    wired: Callable[..., Daemon], crawler_stub: CrawlerStub
) -> None:
    daemon = wired()
    daemon.breaker.record_failure()
    before = datetime.now(UTC)
    outcome = daemon.runner.run(Running(execute(1)), TaskSpec(1, "camera"))
    assert isinstance(outcome, Success)
    expected = [source_id("camera", i, crawler_pb2.PLATFORM_MERCARI) for i in reversed(range(5))]
    assert (outcome.status, outcome.total_found, outcome.source_ids, outcome.calls) == (
        "success",
        5,
        expected,
        1,
    )
    items = json.loads(outcome.items_json)
    assert [item["source_id"] for item in items] == expected
    assert items[0]["title"] == "camera #4" and items[0]["platform"] == "mercari"
    assert before <= parse_timestamp(outcome.crawled_at) <= datetime.now(UTC)
    assert outcome.duration_s > 0
    assert [c["code"] for c in crawler_stub.calls_for(1)] == ["OK"]
    daemon.breaker.record_failure()
    assert daemon.breaker.state == "closed"  # the answer reset the count: one failure since, of two


def test_an_empty_search_is_a_no_items_success(wired: Callable[..., Daemon]) -> None:
    outcome = wired().runner.run(Running(execute(2)), TaskSpec(2, "nothing;no_items"))
    assert isinstance(outcome, Success)
    assert (outcome.status, outcome.total_found, outcome.source_ids, outcome.items_json) == (
        "no_items", 0, [], "[]")  # fmt: skip


def test_a_transient_failure_retried_inside_the_crawl_is_a_success_of_two_calls(
    wired: Callable[..., Daemon], crawler_stub: CrawlerStub
) -> None:
    daemon = wired(
        APP_CRAWLER_ATTEMPTS="2", APP_CRAWLER_BACKOFF_INITIAL="10ms", APP_CRAWLER_BACKOFF_MAX="20ms"
    )
    outcome = daemon.runner.run(Running(execute(3)), TaskSpec(3, "lens;fail=UNAVAILABLE*1"))
    assert isinstance(outcome, Success) and outcome.calls == 2
    assert [c["code"] for c in crawler_stub.calls_for(3)] == ["UNAVAILABLE", "OK"]


def test_a_transient_failure_is_a_counted_retry_and_a_breaker_failure(
    wired: Callable[..., Daemon], crawler_stub: CrawlerStub
) -> None:
    daemon = wired(
        APP_CRAWLER_ATTEMPTS="2", APP_CRAWLER_BACKOFF_INITIAL="10ms", APP_CRAWLER_BACKOFF_MAX="20ms"
    )
    outcome = daemon.runner.run(Running(execute(4, retry=1)), TaskSpec(4, "lens;fail=UNAVAILABLE"))
    assert isinstance(outcome, Retry)
    assert (outcome.count_retry, outcome.code) == (True, "UNAVAILABLE")
    assert outcome.error_text == "UNAVAILABLE: stub: scripted UNAVAILABLE (call 2 of task 4)"
    assert 1.0 <= outcome.delay_s <= 2.0  # the second retry's back-off
    assert [c["code"] for c in crawler_stub.calls_for(4)] == ["UNAVAILABLE", "UNAVAILABLE"]
    assert daemon.breaker.state == "closed"  # one crawl is one failure (not one per call), of two
    daemon.breaker.record_failure()
    assert daemon.breaker.state == "open"


def test_a_transient_failure_at_max_retry_is_dead_lettered(wired: Callable[..., Daemon]) -> None:
    outcome = wired().runner.run(Running(execute(5, retry=3)), TaskSpec(5, "lens;fail=UNKNOWN"))
    assert isinstance(outcome, DeadLetter)
    assert outcome.reason == "max_retry: UNKNOWN: stub: scripted UNKNOWN (call 1 of task 5)"


def test_a_permanent_failure_is_dead_lettered_at_once_and_counts_as_the_crawler_answering(
    wired: Callable[..., Daemon], crawler_stub: CrawlerStub
) -> None:
    daemon = wired(APP_CRAWLER_ATTEMPTS="3")
    daemon.breaker.record_failure()
    outcome = daemon.runner.run(Running(execute(6)), TaskSpec(6, "lens;fail=INVALID_ARGUMENT"))
    detail = "INVALID_ARGUMENT: stub: scripted INVALID_ARGUMENT (call 1 of task 6)"
    assert isinstance(outcome, DeadLetter)
    assert (outcome.reason, outcome.error_text, outcome.code) == (f"permanent: {detail}", detail,
                                                                  "INVALID_ARGUMENT")  # fmt: skip
    assert len(crawler_stub.calls_for(6)) == 1  # never retried
    daemon.breaker.record_failure()
    assert daemon.breaker.state == "closed"  # the answer reset the count: one failure since, of two


def test_a_failed_probe_goes_back_at_once_without_spending_a_retry(wired: Callable[..., Daemon]) -> None:
    runner = wired().runner
    outcome = runner.run(Running(execute(7, retry=3), probe=True), TaskSpec(7, "lens;fail=UNAVAILABLE"))
    assert isinstance(outcome, Retry) and (outcome.delay_s, outcome.count_retry) == (0.0, False)
    permanent = runner.run(Running(execute(8), probe=True), TaskSpec(8, "lens;fail=NOT_FOUND"))
    assert isinstance(permanent, DeadLetter) and permanent.reason.startswith("permanent: NOT_FOUND: ")


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        *((code, True) for code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNKNOWN",
                                    "ABORTED", "INTERNAL", "CANCELLED")),
        *((code, False) for code in ("INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED",
                                     "FAILED_PRECONDITION", "UNIMPLEMENTED", "ALREADY_EXISTS", "OUT_OF_RANGE",
                                     "DATA_LOSS")),
    ],
)  # fmt: skip
def test_what_each_crawler_status_ends_as(wired: Callable[..., Daemon], code: str, transient: bool) -> None:
    """The crawler answers with the code (CANCELLED here is the server's, not ours: transient)."""
    outcome = wired().runner.run(Running(execute(9)), TaskSpec(9, f"x;fail={code}"))
    if transient:
        assert isinstance(outcome, Retry) and outcome.count_retry and outcome.code == code
    else:
        assert isinstance(outcome, DeadLetter) and outcome.reason.startswith(f"permanent: {code}: ")


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("stopped", Skip("cancelled")),  # the task was stopped: acknowledged, not retried
        ("lost", Skip("lost")),  # another consumer holds the entry: the ending finds it not held
        ("shutdown", LeavePending("crawl interrupted: shutdown")),  # a restart takes it up again
    ],
)
def test_a_cancelled_crawl_ends_by_its_reason(
    wired: Callable[..., Daemon], crawler_stub: CrawlerStub, reason: str, expected: object
) -> None:
    daemon = wired(APP_BREAKER_FAILURE_THRESHOLD="1")
    running = Running(execute(10))
    with crawling(running) as pool:
        crawl = pool.submit(daemon.runner.run, running, TaskSpec(10, "hang"))
        wait_until(lambda: crawler_stub.active_calls == 1, 5, what="the crawl in flight")
        running.cancel_reason = reason  # what Leases sets before cancelling the token
        running.token.cancel()
        assert crawl.result(timeout=5) == expected
    wait_until(lambda: crawler_stub.calls_for(10), 5, what="the call recorded")
    assert [c["code"] for c in crawler_stub.calls_for(10)] == ["CANCELLED"]
    assert crawler_stub.active_calls == 0
    assert daemon.breaker.state == "closed"  # our own cancel says nothing about the crawler


def test_a_crawl_cancelled_during_its_back_off_ends_at_once(
    wired: Callable[..., Daemon], crawler_stub: CrawlerStub
) -> None:
    daemon = wired(APP_CRAWLER_ATTEMPTS="3", APP_CRAWLER_BACKOFF_INITIAL="10s", APP_CRAWLER_BACKOFF_MAX="10s")
    running = Running(execute(11))
    with crawling(running) as pool:
        crawl = pool.submit(daemon.runner.run, running, TaskSpec(11, "x;fail=UNAVAILABLE"))
        wait_until(lambda: crawler_stub.calls_for(11), 5, what="the first call failed")
        started = time.monotonic()
        daemon.leases.add(running)
        assert daemon.leases.cancel_all("shutdown") == 1
        assert crawl.result(timeout=5) == LeavePending("crawl interrupted: shutdown")
        assert time.monotonic() - started < 2.0  # not after the 10 s back-off
    assert len(crawler_stub.calls_for(11)) == 1


# -- stops and re-enables (the runner's only own Redis writes) ----------------------------------------------


def test_a_stop_message_stops_the_task_and_is_acknowledged(
    wired: Callable[..., Daemon], r: redis.Redis
) -> None:
    daemon = wired()
    daemon.lifecycle.register([TaskSpec(12, "x", interval_s=60)])
    time.sleep(0.002)  # the next millisecond: an entry id is ms-precise, the start's stamp µs-precise
    stop = read_one(daemon, lambda: Producer(r).stop_task(12, "api"))
    assert daemon.runner.run(Running(stop), None) == Skip("stop")
    assert RedisTaskRegistry(r).get(12).status == "stopped"  # type: ignore[union-attr]
    assert r.zscore(keys.schedule_set(keys.DEFAULT_STREAM), "12") is None
    assert counter(daemon, "stops") == 1


def test_a_stop_made_before_the_tasks_last_start_changes_nothing(
    wired: Callable[..., Daemon], r: redis.Redis
) -> None:
    daemon = wired()
    stop = read_one(daemon, lambda: Producer(r).stop_task(13, "api"))
    daemon.lifecycle.register([TaskSpec(13, "x", interval_s=60)])  # started after the stop was made
    assert daemon.runner.run(Running(stop), None) == Skip("stop")
    assert RedisTaskRegistry(r).get(13).status == "running"  # type: ignore[union-attr]
    assert counter(daemon, "stops") == 0


def test_a_users_execute_made_after_the_stop_restarts_the_task_and_crawls(
    wired: Callable[..., Daemon], r: redis.Redis, crawler_stub: CrawlerStub
) -> None:
    daemon = wired()
    daemon.lifecycle.register([TaskSpec(14, "x", status="stopped")])
    time.sleep(0.002)  # the next millisecond: an entry id is ms-precise, the stop's stamp µs-precise
    spec = RedisTaskRegistry(r).get(14)
    assert spec is not None and spec.status == "stopped"
    msg = read_one(daemon, lambda: Producer(r).submit_task(14, "user_create"))
    outcome = daemon.runner.run(Running(msg), spec)
    assert isinstance(outcome, Success) and outcome.total_found == 5
    assert RedisTaskRegistry(r).get(14).status == "running"  # type: ignore[union-attr]
    assert len(crawler_stub.calls_for(14)) == 1


def test_an_execute_made_before_the_stop_is_skipped_without_a_crawl(
    wired: Callable[..., Daemon], r: redis.Redis, crawler_stub: CrawlerStub
) -> None:
    daemon = wired()
    msg = read_one(daemon, lambda: Producer(r).submit_task(15, "user_create"))
    daemon.lifecycle.register([TaskSpec(15, "x", status="stopped")])
    spec = RedisTaskRegistry(r).get(15)
    assert daemon.runner.run(Running(msg), spec) == Skip("skipped")
    assert RedisTaskRegistry(r).get(15).status == "stopped"  # type: ignore[union-attr]
    assert crawler_stub.calls_for(15) == []
