"""Leases against a real Redis: what a daemon holds, renewal, lost entries, cancellation (by task, all, by
a stop on the control channel, by the renewal's stopped-task backstop), and never starting an entry twice.

Built as ``Daemon`` wires them (not started): the renewal job and the control listener are run here the
way ``Daemon.start`` runs them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from crawler_stub import CrawlerStub
from scheduler.daemon.app import Daemon
from scheduler.daemon.leases import Running
from scheduler.daemon.outcomes import LeavePending, Skip
from scheduler.daemon.timers import Job, TimerThread
from scheduler.devtools.redis_server import RedisServer
from scheduler.taskqueue import Consumer, Producer, StreamMessage, keys
from scheduler.tasks.registry import TaskSpec
from tests.daemon_parts import counter, crawling, wired_daemons
from tests.e2e.support import wait_until

S, G = keys.DEFAULT_STREAM, keys.DEFAULT_GROUP
CHANNEL = keys.control_channel(S)


@pytest.fixture
def wired(redis_server: RedisServer, r: redis.Redis) -> Iterator[Callable[..., Daemon]]:
    with wired_daemons(redis_server.url) as make:
        yield make


def read(daemon: Daemon, *task_ids: int) -> list[StreamMessage]:
    """Enqueue and read executes of these tasks (registered, running, unless they are known already)."""
    registry = daemon.lifecycle.registry
    known = registry.registered(list(task_ids))
    registry.put_many(TaskSpec(t, f"k{t}") for t, k in zip(task_ids, known, strict=True) if not k)
    daemon.consumer.ensure_group()
    Producer(daemon.redis).submit_many(task_ids, "user_create")
    return daemon.consumer.read(len(task_ids), block_ms=100)


def hold(daemon: Daemon, *task_ids: int) -> list[Running]:
    """Read entries and hold them, as the read loop does before handing them to workers."""
    held = [Running(msg) for msg in read(daemon, *task_ids)]
    for running in held:
        daemon.leases.add(running)
    return held


def pending(r: redis.Redis) -> dict[str, dict[str, object]]:
    """Entry id → its row in the group's pending list (consumer, idle ms, deliveries)."""
    rows = r.xpending_range(S, G, min="-", max="+", count=100)
    return {row["message_id"].decode(): row for row in rows}


# -- renewal ---------------------------------------------------------------------------------------------


def test_renewal_keeps_a_held_entrys_idle_time_low_so_no_one_reclaims_it(
    wired: Callable[..., Daemon], r: redis.Redis
) -> None:
    env = {"APP_LEASE_TIMEOUT": "1s", "APP_RECLAIM_INTERVAL": "500ms"}
    daemon = wired("a", **env)
    [held] = hold(daemon, 1)
    [unheld] = read(daemon, 2)  # read, never held: nothing renews it
    halt = threading.Event()
    s = daemon.settings
    timer = TimerThread(
        "leases", [Job("lease renewal", lambda: s.lease_renew_interval, daemon.leases.renew)], halt
    )
    timer.start()
    try:
        idle: list[int] = []
        deadline = time.monotonic() + 1.3
        while time.monotonic() < deadline:
            idle.append(int(pending(r)[held.msg.id]["time_since_delivered"]))  # type: ignore[call-overload]
            time.sleep(0.05)
        rows = pending(r)
        assert max(idle) < 1000  # always under the lease: renewed every third of it
        assert int(rows[unheld.id]["time_since_delivered"]) >= 1300  # type: ignore[call-overload]
        assert rows[held.msg.id]["times_delivered"] == 1  # a renewal is not a delivery
        reclaimed = wired("b", **env).consumer.reclaim(int(s.lease_timeout * 1000), 10)
        assert [m.id for m in reclaimed] == [unheld.id]
        assert pending(r)[held.msg.id]["consumer"] == b"a"
        assert counter(daemon, "lease_renewals") >= 3
        assert not held.token.cancelled
    finally:
        halt.set()
        timer.join(2)


def test_an_entry_reclaimed_by_another_consumer_is_lost_and_its_crawl_cancelled(
    wired: Callable[..., Daemon], r: redis.Redis, crawler_stub: CrawlerStub
) -> None:
    daemon = wired("a", APP_CRAWLER_GRPC_ADDR=crawler_stub.address)
    daemon.crawler.start()
    taken, kept = hold(daemon, 1, 2)
    with crawling(taken) as pool:
        crawl = pool.submit(daemon.runner.run, taken, TaskSpec(1, "hang"))
        wait_until(lambda: crawler_stub.active_calls == 1, 5, what="the crawl in flight")
        # another daemon judged this one stalled and took the entry (the oldest of a's pending list)
        assert [m.id for m in wired("b").consumer.reclaim(0, 1)] == [taken.msg.id]
        daemon.leases.renew()
        assert (taken.cancel_reason, taken.token.cancelled) == ("lost", True)
        assert crawl.result(timeout=5) == Skip("lost")
    wait_until(lambda: crawler_stub.active_calls == 0, 5, what="the crawl ended")
    assert (kept.cancel_reason, kept.token.cancelled) == (None, False)
    assert counter(daemon, "leases_lost") == 1
    rows = pending(r)
    assert rows[taken.msg.id]["consumer"] == b"b"  # never stolen back
    assert rows[kept.msg.id]["consumer"] == b"a"
    daemon.leases.forget(taken)  # the writer's, once it found the entry not held
    daemon.leases.renew()
    assert counter(daemon, "leases_lost") == 1 and not kept.token.cancelled


def test_an_entry_acknowledged_by_someone_else_is_lost_too(
    wired: Callable[..., Daemon], r: redis.Redis
) -> None:
    daemon = wired()
    [acked, kept] = hold(daemon, 1, 2)
    r.xack(S, G, acked.msg.id)  # e.g. an operator's tool ended it
    daemon.leases.renew()
    assert (acked.cancel_reason, acked.token.cancelled) == ("lost", True)
    assert not kept.token.cancelled
    assert counter(daemon, "leases_lost") == 1


def test_an_entry_deleted_under_its_crawl_is_still_held_not_lost(
    wired: Callable[..., Daemon], r: redis.Redis
) -> None:
    """Its payload is in the worker's hands; the crawl goes on and its ending still finds it held."""
    daemon = wired()
    [running] = hold(daemon, 1)
    r.xdel(S, running.msg.id)
    daemon.leases.renew()
    assert (running.cancel_reason, running.token.cancelled) == (None, False)
    assert counter(daemon, "leases_lost") == 0
    assert pending(r)[running.msg.id]["consumer"] == b"a"


def test_an_entry_this_daemons_writer_has_just_ended_is_not_counted_lost(
    wired: Callable[..., Daemon], r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = wired()
    [running] = hold(daemon, 1)
    # the writer's loop: the batch is written (this is _flush), and its holds are forgotten only after it
    assert daemon.writer._flush([(running, Skip("stop"))])
    assert pending(r) == {}
    daemon.leases.renew()  # the lease timer, between the two
    daemon.leases.forget(running)
    assert counter(daemon, "leases_lost") == 0
    assert not [rec for rec in caplog.records if "reclaimed or ended by another consumer" in rec.getMessage()]


# -- holding -----------------------------------------------------------------------------------------------


def test_split_refuses_to_start_an_entry_already_held(wired: Callable[..., Daemon], r: redis.Redis) -> None:
    daemon = wired()
    held = hold(daemon, 1, 2)
    [new] = read(daemon, 3)
    # the same consumer re-reading its own pending list (as after a restart, or a recreated group)
    again = Consumer(r, None, S, G, "a").read(10, block_ms=None)
    assert [m.id for m in again] == [h.msg.id for h in held] + [new.id]
    fresh, refused = daemon.leases.split(again)
    assert [m.id for m in fresh] == [new.id]
    assert [m.id for m in refused] == [h.msg.id for h in held]
    daemon.leases.forget(held[0])
    fresh, refused = daemon.leases.split(again)
    assert [m.id for m in fresh] == [held[0].msg.id, new.id] and [m.id for m in refused] == [held[1].msg.id]
    assert daemon.leases.ids() == {held[1].msg.id} and len(daemon.leases) == 1


def test_forget_ends_only_that_very_hold(wired: Callable[..., Daemon]) -> None:
    """A later hold of the same entry (taken up again after a reclaim) is not the earlier one's to end."""
    daemon = wired()
    [first] = hold(daemon, 1)
    second = Running(first.msg)
    daemon.leases.add(second)
    daemon.leases.forget(first)
    assert daemon.leases.ids() == {first.msg.id}
    daemon.leases.cancel_all("shutdown")
    assert second.token.cancelled and not first.token.cancelled
    daemon.leases.forget(second)
    assert len(daemon.leases) == 0


# -- cancellation ----------------------------------------------------------------------------------------


def test_cancel_all_cancels_every_held_crawl_and_keeps_an_earlier_reason(
    wired: Callable[..., Daemon], crawler_stub: CrawlerStub
) -> None:
    daemon = wired(APP_CRAWLER_GRPC_ADDR=crawler_stub.address)
    daemon.crawler.start()
    stopped, other = hold(daemon, 1, 2)
    with crawling(stopped, other) as pool:
        crawls = [
            pool.submit(daemon.runner.run, run, TaskSpec(t, "hang")) for run, t in ((stopped, 1), (other, 2))
        ]
        wait_until(lambda: crawler_stub.active_calls == 2, 5, what="both crawls in flight")
        daemon.leases.cancel_task(1, "stopped")
        assert daemon.leases.cancel_all("shutdown") == 2
        assert [c.result(timeout=5) for c in crawls] == [
            Skip("cancelled"),
            LeavePending("crawl interrupted: shutdown"),
        ]
    assert (stopped.cancel_reason, other.cancel_reason) == ("stopped", "shutdown")
    wait_until(lambda: crawler_stub.active_calls == 0, 5, what="both calls ended")
    assert len(daemon.leases) == 2  # cancelled, still held: their endings are the writer's
    for running in (stopped, other):
        daemon.leases.forget(running)
    assert daemon.leases.cancel_all("shutdown") == 0


def test_cancel_task_cancels_only_that_tasks_executes(wired: Callable[..., Daemon], r: redis.Redis) -> None:
    daemon = wired()
    mine, theirs = hold(daemon, 1, 2)
    daemon.consumer.ensure_group()
    Producer(r).stop_task(1)
    [stop_msg] = daemon.consumer.read(1, block_ms=100)
    stop = Running(stop_msg)
    daemon.leases.add(stop)
    daemon.leases.cancel_task(1, "stopped")
    assert (mine.cancel_reason, mine.token.cancelled) == ("stopped", True)
    assert not theirs.token.cancelled
    assert not stop.token.cancelled  # the stop itself runs on
    daemon.leases.cancel_task(1, "lost")
    assert mine.cancel_reason == "stopped"  # the first reason stands


def wait_subscribed(r: redis.Redis, listeners: int = 1) -> None:
    wait_until(lambda: dict(r.pubsub_numsub(CHANNEL)).get(CHANNEL.encode(), 0) >= listeners, 5,
               what="the control listener subscribed")  # fmt: skip


@pytest.fixture
def listening(wired: Callable[..., Daemon], r: redis.Redis) -> Iterator[Daemon]:
    """A daemon's parts with its control listener running (as ``Daemon.start`` runs it)."""
    daemon = wired()
    halt = threading.Event()
    thread = threading.Thread(target=daemon.leases.listen, args=(halt,), name="control", daemon=True)
    thread.start()
    wait_subscribed(r)
    yield daemon
    halt.set()
    thread.join(2)
    assert not thread.is_alive()


def test_a_stop_on_the_control_channel_cancels_the_matching_held_runs(
    listening: Daemon, r: redis.Redis
) -> None:
    daemon = listening
    daemon.lifecycle.register([TaskSpec(1, "a"), TaskSpec(2, "b")])
    daemon.consumer.ensure_group()
    old1, old2 = (Running(m) for m in daemon.consumer.read(2, block_ms=100))
    for running in (old1, old2):
        daemon.leases.add(running)
    daemon.lifecycle.stop(1, "another daemon")  # publishes "stop 1" on the channel
    wait_until(lambda: old1.token.cancelled, 5, what="task 1's run cancelled")
    assert old1.cancel_reason == "stopped"
    # task 1 started again by a user after that stop: its new run is not that stop's to cancel
    time.sleep(0.002)  # the next millisecond: an entry id is ms-precise, the stop's stamp µs-precise
    [new1] = read(daemon, 1)
    renewed = Running(new1)
    daemon.leases.add(renewed)
    for noise in ("stop 1", "stop x", "hello", "stop"):  # the old stop heard again, and junk
        r.publish(CHANNEL, noise)
    daemon.lifecycle.stop(2, "cli")  # handled after everything published before it
    wait_until(lambda: old2.token.cancelled, 5, what="task 2's run cancelled")
    assert (renewed.cancel_reason, renewed.token.cancelled) == (None, False)


def test_the_listener_resubscribes_after_its_connection_is_killed(
    listening: Daemon, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop published while it resubscribes is heard by no one (pub/sub keeps nothing: the renewal's
    backstop catches that one); once resubscribed, stops reach it again."""
    daemon = listening
    daemon.lifecycle.register([TaskSpec(3, "c")])
    daemon.consumer.ensure_group()
    [running] = [Running(m) for m in daemon.consumer.read(1, block_ms=100)]
    daemon.leases.add(running)
    with caplog.at_level(logging.WARNING, logger="scheduler.daemon.leases"):
        assert r.client_kill_filter(_type="pubsub") == 1

        def stop_heard() -> bool:
            daemon.lifecycle.stop(3, "cli")  # safe to repeat; each one is published again
            return running.token.cancelled

        wait_until(stop_heard, 5, interval=0.1, what="a stop heard after the reconnect")
    assert running.cancel_reason == "stopped"
    lost = [rec for rec in caplog.records if rec.name == "scheduler.daemon.leases"]
    assert [rec.getMessage() for rec in lost] == ["control channel lost (ConnectionError); resubscribing"]
    assert lost[0].exc_info is None


def test_renewal_cancels_runs_of_tasks_stopped_or_deleted_without_a_word_on_the_channel(
    wired: Callable[..., Daemon],
) -> None:
    daemon = wired()  # no listener: the stops are heard by no channel
    daemon.lifecycle.register([TaskSpec(1, "a"), TaskSpec(2, "b"), TaskSpec(3, "c")])
    daemon.consumer.ensure_group()
    runs = [Running(m) for m in daemon.consumer.read(3, block_ms=100)]
    for running in runs:
        daemon.leases.add(running)
    daemon.lifecycle.stop(1, "cli")
    daemon.lifecycle.delete(2, "cli")
    daemon.leases.renew()
    assert [(run.cancel_reason, run.token.cancelled) for run in runs] == [
        ("stopped", True), ("stopped", True), (None, False)]  # fmt: skip
