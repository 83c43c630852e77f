"""Lost replies and errors after dispatch (the reliability issue's defects 2, 3 and 10), against a real
Redis behind a proxy that lets a command run and loses its reply."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from crawler_stub import CrawlerStub
from scheduler.config.load import load_settings
from scheduler.daemon.app import Daemon
from scheduler.devtools.redis_server import RedisServer
from scheduler.errors import QueueConnectionError
from scheduler.taskqueue import Consumer, Producer, keys
from scheduler.tasks.lifecycle import Lifecycle, RunRequest
from scheduler.tasks.registry import RedisTaskRegistry, TaskSpec
from tests.e2e.support import pending_count, wait_until
from tests.lossy_proxy import LossyProxy

S, G = keys.DEFAULT_STREAM, keys.DEFAULT_GROUP


@pytest.fixture
def proxy(redis_server: RedisServer, r: redis.Redis) -> Iterator[LossyProxy]:
    p = LossyProxy(redis_server.port)
    yield p
    p.close()


def test_an_ending_sent_again_after_its_reply_was_lost_gives_the_same_answer(
    r: redis.Redis, proxy: LossyProxy, redis_server: RedisServer
) -> None:
    """redis-py re-sends a command whose reply was lost: the dead letter must still release the task's
    run lock and set its status, and be written once."""
    settings = load_settings(env={"REDIS_URL": redis_server.url})
    direct = Consumer(r, None, S, G, "c")
    direct.ensure_group()
    Producer(r).submit_task(31, "user_create")
    [msg] = direct.read(1, block_ms=100)
    life = Lifecycle(settings, r)
    life.lock_runs([RunRequest(31, msg.id, msg.message.requested_at(msg.id), 0, False)], "c")
    assert r.get(life.lock_key(31)) == msg.id.encode()

    retrying = redis.Redis(port=proxy.port, retry=Retry(NoBackoff(), 3))  # redis-py's own habit
    via_proxy = Consumer(retrying, None, S, G, "c")
    via_proxy.scripts.load()
    proxy.lose_reply_to(lambda data: b"EVALSHA" in data)
    assert via_proxy.dead_letter(msg, "permanent: INVALID_ARGUMENT: bad keyword")
    assert proxy.swallowed == 1
    assert r.xlen(keys.dlq_stream(S)) == 1
    assert r.get(life.lock_key(31)) is None
    assert r.get(keys.crawl_status_key(31)) == b"failed"
    assert pending_count(r) == 0
    retrying.close()


def test_a_read_whose_reply_was_lost_is_taken_up_again(r: redis.Redis, proxy: LossyProxy) -> None:
    no_retry = redis.Redis(port=proxy.port, retry=Retry(NoBackoff(), 0))
    consumer = Consumer(no_retry, None, S, G, "c")
    consumer.ensure_group()
    Producer(r).submit_many([41, 42, 43])
    proxy.lose_reply_to(lambda data: b"XREADGROUP" in data and b">" in data)
    with pytest.raises(QueueConnectionError):
        consumer.read(10, block_ms=100)
    assert proxy.swallowed == 1
    assert pending_count(r) == 3  # delivered to us, and we never saw them
    assert consumer.read(10, block_ms=10) == []  # a second read cannot see them: they are not new
    recovered = consumer.recover(10, held=[])
    assert sorted(m.message.task_id for m in recovered) == [41, 42, 43]
    assert consumer.recover(10, held=[m.id for m in recovered]) == []  # what a thread holds is skipped
    rows = r.xpending_range(S, G, min="-", max="+", count=10)
    assert all(row["times_delivered"] == 1 for row in rows)  # recovery counts no delivery
    no_retry.close()


def daemon_env(redis_url: str, crawler: CrawlerStub, **more: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "APP_CRAWLER_GRPC_ADDR": crawler.address,
        "APP_CONSUMER_NAME": "inproc",
        "APP_METRICS_PORT": "0",
        "APP_WORKER_POOL_SIZE": "4",
        "APP_LEASE_TIMEOUT": "30s",
        **more,
    }


class Running:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.thread = threading.Thread(target=daemon.run)
        self.thread.start()
        assert daemon.started.wait(10)
        self.min_busy = 0
        self._watch = threading.Thread(target=self._sample, daemon=True)
        self._watch.start()

    def _sample(self) -> None:
        while self.thread.is_alive():
            self.min_busy = min(self.min_busy, self.daemon.slots.busy)
            time.sleep(0.001)

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


def crawled(crawler: CrawlerStub) -> Counter[int]:
    return Counter(int(c["task_id"]) for c in crawler.calls)


def test_the_daemon_takes_up_entries_whose_read_reply_was_lost(
    r: redis.Redis, proxy: LossyProxy, crawler_stub: CrawlerStub
) -> None:
    """With one daemon nobody reclaims its entries: a lost read reply must not strand them."""
    daemon = Daemon(load_settings(env=daemon_env(f"redis://127.0.0.1:{proxy.port}", crawler_stub)),
                    handle_signals=False)  # fmt: skip
    run = Running(daemon)
    try:
        RedisTaskRegistry(r).put_many([TaskSpec(t, f"k{t}") for t in (51, 52, 53)])
        proxy.lose_reply_containing(b'"task_id":51')  # whichever read delivers it
        Producer(r).submit_many([51, 52, 53], "user_create")
        wait_until(lambda: set(crawled(crawler_stub)) == {51, 52, 53}, 10, what="every task crawled")
        wait_until(lambda: pending_count(r) == 0, 5, what="nothing pending")
        assert proxy.swallowed == 1
        assert max(crawled(crawler_stub).values()) == 1
    finally:
        run.stop()


def test_an_error_after_dispatch_never_starts_the_batch_again(
    r: redis.Redis, redis_server: RedisServer, crawler_stub: CrawlerStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 2: accepting the pipelined next read fails after the batch was handed to workers."""
    daemon = Daemon(load_settings(env=daemon_env(redis_server.url, crawler_stub)), handle_signals=False)
    accept = daemon.consumer.accept
    failures = {"left": 3}

    def failing_accept(reply: Any) -> Any:
        if reply and failures["left"]:
            failures["left"] -= 1
            raise QueueConnectionError("injected: accepting the next read failed")
        return accept(reply)

    monkeypatch.setattr(daemon.consumer, "accept", failing_accept)
    # A blocking read takes one entry of the backlog, so every turn pipelines a read of the rest while
    # its batch is handed on: each injection hits a non-empty next read, whatever the timing.
    read = daemon.consumer.read
    monkeypatch.setattr(daemon.consumer, "read", lambda count=10, block_ms=2000: read(1, block_ms=block_ms))
    tasks = list(range(61, 81))
    RedisTaskRegistry(r).put_many([TaskSpec(t, f"k{t}") for t in tasks])
    Producer(r).submit_many(tasks, "user_create")  # the backlog, before the daemon reads
    run = Running(daemon)
    try:
        wait_until(lambda: set(crawled(crawler_stub)) == set(tasks), 15, what="every task crawled")
        wait_until(lambda: pending_count(r) == 0 and daemon.slots.busy == 0, 5, what="all ended")
        assert failures["left"] == 0
        assert max(crawled(crawler_stub).values()) == 1  # started once each
        assert run.min_busy >= 0  # backpressure intact
        assert not any(r.get(keys.run_lock_key(S, t)) for t in tasks)
    finally:
        run.stop()


def test_a_classification_error_loses_nothing_of_the_next_read(
    r: redis.Redis, redis_server: RedisServer, crawler_stub: CrawlerStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 10: the pipelined next read's entries are not thrown away when the batch's own replies
    fail (a write refused under maxmemory, say)."""
    daemon = Daemon(load_settings(env=daemon_env(redis_server.url, crawler_stub)), handle_signals=False)
    verdicts = Lifecycle.verdicts
    failures = {"left": 2}

    def failing(reply: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise redis.ResponseError("OOM command not allowed (injected)")
        return verdicts(reply)

    monkeypatch.setattr(daemon.lifecycle, "verdicts", failing)
    monkeypatch.setattr("scheduler.daemon.app.Lifecycle.verdicts", staticmethod(failing))
    run = Running(daemon)
    tasks = list(range(81, 101))
    try:
        RedisTaskRegistry(r).put_many([TaskSpec(t, f"k{t}", interval_s=3600) for t in tasks])
        Producer(r).submit_many(tasks, "user_create")
        wait_until(lambda: set(crawled(crawler_stub)) == set(tasks), 15, what="every task crawled")
        wait_until(lambda: pending_count(r) == 0, 5, what="nothing pending")
        assert failures["left"] == 0
        assert max(crawled(crawler_stub).values()) == 1
    finally:
        run.stop()


def test_a_full_daemon_never_asks_for_a_negative_read(
    r: redis.Redis, redis_server: RedisServer, crawler_stub: CrawlerStub
) -> None:
    """More entries held than slots (successes waiting for a slow writer): the next read asks for none."""
    daemon = Daemon(load_settings(env=daemon_env(redis_server.url, crawler_stub)), handle_signals=False)
    daemon.slots.take(daemon.slots.size + 3)  # a batch in hand reserved, workers all busy
    assert daemon.intake._free() == 0
    daemon.slots._busy = 0
    daemon.redis.close()


def test_a_payload_lost_entry_frees_its_tasks_run_lock_at_once(
    r: redis.Redis, redis_server: RedisServer, crawler_stub: CrawlerStub
) -> None:
    """A restart resumes an entry whose payload was trimmed while it crawled: the dead letter has no task
    id to find the lock by, so the sweep runs at once instead of in 30 s."""
    consumer = Consumer(r, None, S, G, "inproc")
    consumer.ensure_group()
    [entry] = Producer(r).submit_many([71], "user_create")
    consumer.read(1, block_ms=100)
    r.set(keys.run_lock_key(S, 71), entry)  # the crawl took the lock, then its daemon was killed
    r.xdel(S, entry)  # trimmed under it
    daemon = Daemon(load_settings(env=daemon_env(redis_server.url, crawler_stub)), handle_signals=False)
    run = Running(daemon)
    try:
        wait_until(lambda: r.xlen(keys.dlq_stream(S)) == 1, 5, what="the payload-lost dead letter")
        wait_until(lambda: r.get(keys.run_lock_key(S, 71)) is None, 5, what="the lock freed well before 30 s")
    finally:
        run.stop()
