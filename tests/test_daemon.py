"""The daemon in-process (handle_signals=False) against real Redis and the real fake crawler."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from crawler_stub import CrawlerStub
from scheduler.config.load import load_settings
from scheduler.daemon.app import Daemon
from scheduler.devtools.redis_server import RedisServer
from scheduler.taskqueue import Producer, TaskMessage, keys
from scheduler.tasks.lifecycle import Lifecycle
from scheduler.tasks.registry import RedisTaskRegistry, TaskSpec
from tests.e2e.support import pending_count, statuses, wait_until


@pytest.fixture
def daemon(redis_server: RedisServer, r: redis.Redis, crawler_stub: CrawlerStub) -> Iterator[Daemon]:
    settings = load_settings(
        env={
            "REDIS_URL": redis_server.url,
            "APP_CRAWLER_GRPC_ADDR": crawler_stub.address,
            "APP_CONSUMER_NAME": "inproc",
            "APP_METRICS_PORT": "0",
            "APP_WORKER_POOL_SIZE": "4",
            "APP_BREAKER_OPEN_DURATION": "1s",
        }
    )
    d = Daemon(settings, handle_signals=False)
    thread = threading.Thread(target=d.run)
    thread.start()
    assert d.started.wait(10)
    yield d
    d.request_stop()
    thread.join(30)
    assert not thread.is_alive()


def processed(d: Daemon, status: str) -> float:
    return d.metrics.tasks_processed.labels(status)._value.get()


def test_not_serving_opens_the_circuit_and_serving_closes_it(
    daemon: Daemon, crawler_stub: CrawlerStub, r: redis.Redis
) -> None:
    crawler_stub.set_serving(False)
    wait_until(lambda: daemon.breaker.state != "closed", 5, what="circuit opened by the health check")
    time.sleep(1.1)  # a read already blocking when it opened (BLOCK 1 s) may still hand out work
    RedisTaskRegistry(r).put_many([TaskSpec(t, f"k{t}") for t in (1, 2, 3)])
    Producer(r).submit_many([1, 2, 3], "user_create")
    time.sleep(2.5)  # through two half-open checks that still hear NOT_SERVING
    assert crawler_stub.calls == []  # nothing is read while the crawler says it cannot serve
    assert daemon.breaker.state != "closed"
    crawler_stub.set_serving(True)
    wait_until(lambda: set(statuses(r, [1, 2, 3]).values()) == {"success"}, 10)
    assert daemon.breaker.state == "closed"
    assert daemon.metrics.circuit_state._value.get() == 0


def test_unknown_and_stopped_tasks_are_acked_without_a_crawl(
    daemon: Daemon, crawler_stub: CrawlerStub, r: redis.Redis
) -> None:
    RedisTaskRegistry(r).put_many([TaskSpec(5, "stopped one", status="stopped")])
    Producer(r).submit_many([404, 5], "periodic")
    wait_until(lambda: processed(daemon, "skipped") == 2, 5)
    assert crawler_stub.calls == [] and pending_count(r) == 0


def test_a_user_create_made_after_the_stop_restarts_the_task(
    daemon: Daemon, crawler_stub: CrawlerStub, r: redis.Redis, redis_server: RedisServer
) -> None:
    life = Lifecycle(daemon.settings, r)
    life.register([TaskSpec(6, "x", status="stopped")])
    # a retry of a request made before the stop (its origin's time counts, not its re-add): stays stopped
    old = TaskMessage(6, "execute", datetime.now(UTC), 1, "user_create", origin="1-0")
    Producer(r).publish(old)
    wait_until(lambda: processed(daemon, "skipped") == 1, 5)
    assert crawler_stub.calls == []
    Producer(r).submit_task(6, "user_create")
    wait_until(lambda: statuses(r, [6])[6] == "success", 5)
    assert RedisTaskRegistry(r).get(6).status == "running"  # type: ignore[union-attr]
    assert r.zscore(keys.schedule_set(keys.DEFAULT_STREAM), "6") is not None


def test_a_users_execute_during_a_crawl_gets_a_crawl_that_starts_after_it(
    daemon: Daemon, crawler_stub: CrawlerStub, r: redis.Redis
) -> None:
    """The crawl in flight may have fetched before the user asked: the request waits for it (deferred,
    no retry counted) and then runs; acknowledged as a duplicate it went unanswered."""
    Lifecycle(daemon.settings, r).register([TaskSpec(8, "slow;delay=600")])
    wait_until(lambda: crawler_stub.active_calls == 1, 5, what="the first crawl in flight")
    asked = time.time()
    Producer(r).submit_task(8, "user_create")
    wait_until(lambda: statuses(r, [8])[8] == "success" and len(crawler_stub.calls) == 2, 10,
               what="a second crawl")  # fmt: skip
    assert crawler_stub.calls[1]["ts"] > asked
    wait_until(lambda: pending_count(r) == 0, 5)
    assert processed(daemon, "deferred") >= 1 and processed(daemon, "duplicate") == 0


def test_stop_message_cancels_an_in_flight_crawl_in_this_process(
    daemon: Daemon, crawler_stub: CrawlerStub, r: redis.Redis
) -> None:
    Lifecycle(daemon.settings, r).register([TaskSpec(7, "long;hang")])
    wait_until(lambda: crawler_stub.active_calls == 1, 5)
    Producer(r).stop_task(7)
    wait_until(lambda: processed(daemon, "cancelled") == 1, 2, what="the crawl cancelled")
    assert processed(daemon, "stop") == 1 and crawler_stub.active_calls == 0
    assert pending_count(r) == 0 and r.xlen(keys.dlq_stream(keys.DEFAULT_STREAM)) == 0
