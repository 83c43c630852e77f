"""The maintenance jobs every daemon runs, one by one, on real Redis: each job's effect, and that two daemons
running the same job at once do its work once. Then the timer thread that runs them: back-off, a job's
earlier next run, run_soon, a prompt stop (tests/test_timers.py has the refused-job case).

Built as ``Daemon`` wires them (not started); each job is called as its timer calls it."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from crawler_stub import CrawlerStub
from scheduler.daemon import maintenance
from scheduler.daemon.app import Daemon
from scheduler.daemon.startup import prepare
from scheduler.daemon.timers import Job, TimerThread
from scheduler.devtools.redis_server import RedisServer
from scheduler.taskqueue import Producer, StreamMessage, decode, keys
from scheduler.tasks.lifecycle import RunRequest
from scheduler.tasks.registry import TaskSpec
from tests.daemon_parts import wired_daemons
from tests.e2e.support import wait_until

S, G = keys.DEFAULT_STREAM, keys.DEFAULT_GROUP


@pytest.fixture
def wired(redis_server: RedisServer, r: redis.Redis) -> Iterator[Callable[..., Daemon]]:
    with wired_daemons(redis_server.url) as make:
        yield make


def value(metric: object) -> float:
    return float(metric._value.get())  # type: ignore[attr-defined]


def job(daemon: Daemon, name: str) -> Job:
    """One of the daemon's maintenance jobs, as its timer runs it."""
    [found] = [j for j in daemon.maintenance.jobs() if j.name == name]
    return found


def locked_read(daemon: Daemon, task_id: int) -> StreamMessage:
    """An execute read and its run lock taken, as the read loop does before a crawl."""
    daemon.consumer.ensure_group()
    entry_id = Producer(daemon.redis).submit_task(task_id, "periodic")
    [msg] = [m for m in daemon.consumer.read(10, block_ms=100) if m.id == entry_id]
    request = RunRequest(task_id, msg.id, msg.message.requested_at(msg.id), msg.message.retry, False)
    _, [verdict] = daemon.lifecycle.verdicts(daemon.lifecycle.lock_runs([request], daemon.consumer.name))
    assert verdict == "run"
    return msg


# -- delayed-retry mover ---------------------------------------------------------------------------------


def test_a_due_retry_is_moved_into_the_stream_once_with_its_run_lock(
    wired: Callable[..., Daemon], r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = wired("a"), wired("b")
    msg = locked_read(a, 5)
    assert a.consumer.requeue(msg, delay_s=0.2, error_text="UNAVAILABLE: down")  # the Retry outcome's write
    lock = keys.run_lock_key(S, 5)
    assert (r.get(lock) or b"").startswith(f"retry:{msg.id}:".encode())  # parked with the retry
    next_in = a.maintenance.move_due()  # not due yet: nothing moves, the job learns when to look again
    assert next_in is not None and 0 < next_in <= 0.2
    assert r.xlen(S) == 1 and r.zcard(keys.delayed_set(S)) == 1
    time.sleep(next_in + 0.01)
    with caplog.at_level(logging.INFO, logger="scheduler.taskqueue.consumer"):
        moves = [threading.Thread(target=d.maintenance.move_due) for d in (a, b)]
        for thread in moves:
            thread.start()
        for thread in moves:
            thread.join(5)
    assert r.xlen(S) == 2 and r.zcard(keys.delayed_set(S)) == 0
    (new_id, fields), = r.xrange(S, min=f"({msg.id}")  # fmt: skip
    retry = decode(fields[b"data"])
    assert (retry.task_id, retry.retry, retry.origin, retry.source) == (5, 1, msg.id, "periodic")
    assert r.get(lock) == new_id  # the lock names the retry's new entry
    moved = [rec for rec in caplog.records if rec.getMessage() == "due retry moved into the stream"]
    assert len(moved) == 1  # by one of the two daemons
    assert a.maintenance.move_due() is None  # nothing waits any more


# -- periodic publisher ----------------------------------------------------------------------------------


def test_a_due_periodic_task_is_published_once_by_two_daemons_then_skipped_while_queued(
    wired: Callable[..., Daemon], r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = wired("a"), wired("b")
    a.lifecycle.registry.put_many([TaskSpec(9, "k", interval_s=60)])
    assert a.lifecycle.resume(9) == "applied"  # running, on the schedule (no run published)
    schedule = keys.schedule_set(S)
    scheduled = int(time.time() * 1000) - 5
    r.zadd(schedule, {"9": scheduled})  # its time has come
    barrier = threading.Barrier(2)
    next_ins: list[float | None] = []

    def publish(daemon: Daemon) -> None:
        barrier.wait()
        next_ins.append(daemon.maintenance.publish_due())

    threads = [threading.Thread(target=publish, args=(d,)) for d in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    [(entry_id, fields)] = r.xrange(S)
    run = decode(fields[b"data"])
    assert (run.task_id, run.action, run.source, run.retry) == (9, "execute", "periodic", 0)
    assert value(a.metrics.periodic_published) + value(b.metrics.periodic_published) == 1
    assert r.get(keys.run_lock_key(S, 9)) == entry_id
    assert r.zscore(schedule, "9") == scheduled + 60_000  # next period from the scheduled time: no drift
    assert all(n is not None and 59 < n <= 60 for n in next_ins)
    # the next period comes while that run is still queued: skipped, not stacked
    r.zadd(schedule, {"9": int(time.time() * 1000) - 5})
    with caplog.at_level(logging.INFO, logger="scheduler.daemon.maintenance"):
        a.maintenance.publish_due()
    assert r.xlen(S) == 1 and value(a.metrics.periodic_skipped) == 1
    assert any("1 periodic runs skipped" in rec.getMessage() for rec in caplog.records)


# -- heartbeat -------------------------------------------------------------------------------------------


def test_the_heartbeat_is_the_documented_json_with_a_ttl_of_three_intervals(
    wired: Callable[..., Daemon], r: redis.Redis
) -> None:
    daemon = wired("hb", APP_HEARTBEAT_INTERVAL="2s", APP_WORKER_POOL_SIZE="7")
    key = keys.heartbeat_key(S, G, "hb")
    daemon.slots.take(3)
    daemon.breaker.force_open()
    before = time.time()
    daemon.maintenance.heartbeat()
    beat = json.loads(r.get(key) or b"null")
    assert set(beat) == {"consumer", "host", "pid", "ts", "busy", "workers", "circuit"}  # no claim: no token
    assert (beat["consumer"], beat["host"], beat["pid"]) == ("hb", socket.gethostname(), os.getpid())
    assert (beat["busy"], beat["workers"], beat["circuit"]) == (3, 7, "open")
    assert before <= beat["ts"] <= time.time()
    assert 5_000 < r.pttl(key) <= 6_000


def test_a_claimed_name_adds_its_identity_to_the_heartbeat(
    wired: Callable[..., Daemon], r: redis.Redis
) -> None:
    daemon = wired("claimed", APP_HEARTBEAT_INTERVAL="1s")
    claim = prepare(daemon.settings, daemon.redis, threading.Event())
    assert claim is not None
    try:
        daemon.maintenance.heartbeat()
        beat = json.loads(r.get(keys.heartbeat_key(S, G, "claimed")) or b"null")
        assert {"consumer", "host", "pid", "ts", "busy", "workers", "circuit", "token", "started"} <= set(
            beat
        )
        assert beat["token"] == claim.token and beat["circuit"] == "closed" and beat["busy"] == 0
        assert {k: beat[k] for k in claim.identity} == claim.identity
    finally:
        claim.release()
    assert r.get(keys.heartbeat_key(S, G, "claimed")) is None


# -- queue gauges ----------------------------------------------------------------------------------------


def gauges(daemon: Daemon) -> dict[str, float]:
    m = daemon.metrics
    return {
        "length": value(m.queue_length),
        "pending": value(m.queue_pending),
        "lag": value(m.queue_lag),
        "delayed": value(m.delayed_retries),
        "dlq": value(m.dlq_length),
    }


def test_the_gauges_are_the_queues_real_lengths(wired: Callable[..., Daemon], r: redis.Redis) -> None:
    daemon = wired()
    daemon.consumer.ensure_group()
    Producer(r).submit_many(range(1, 11))
    done, retried, dead, _ = daemon.consumer.read(4, block_ms=100)
    assert daemon.consumer.finish(done)
    assert daemon.consumer.requeue(retried, delay_s=60)
    assert daemon.consumer.dead_letter(dead, "permanent: INVALID_ARGUMENT: x")
    daemon.maintenance.refresh_gauges()
    [group] = r.xinfo_groups(S)
    # Redis 6.2 has no lag (./dev test puts the venv's bundled 6.2 first on PATH): the gauge keeps its value
    lag = 6 if group.get("lag") is not None else 0
    assert gauges(daemon) == {"length": 10, "pending": 1, "lag": lag, "delayed": 1, "dlq": 1}
    assert (r.xlen(S), group["pending"], group.get("lag")) in ((10, 1, 6), (10, 1, None))
    assert (r.zcard(keys.delayed_set(S)), r.xlen(keys.dlq_stream(S))) == (1, 1)
    r.xgroup_destroy(S, G)  # no group: nothing pending, the whole stream waiting
    daemon.maintenance.refresh_gauges()
    assert gauges(daemon) == {"length": 10, "pending": 0, "lag": 10, "delayed": 1, "dlq": 1}
    r.delete(S)  # no stream either
    daemon.maintenance.refresh_gauges()
    assert gauges(daemon) == {"length": 0, "pending": 0, "lag": 0, "delayed": 1, "dlq": 1}


# -- crawler health --------------------------------------------------------------------------------------


def test_a_crawler_saying_not_serving_opens_the_circuit(
    wired: Callable[..., Daemon], crawler_stub: CrawlerStub
) -> None:
    daemon = wired(APP_CRAWLER_GRPC_ADDR=crawler_stub.address)
    daemon.crawler.start()
    daemon.maintenance.check_crawler()
    assert daemon.breaker.state == "closed"
    crawler_stub.set_serving(False)
    daemon.maintenance.check_crawler()
    assert daemon.breaker.state == "open"


# -- trim ------------------------------------------------------------------------------------------------


def test_trim_bounds_the_stream_but_never_removes_an_unacknowledged_or_unread_entry(
    wired: Callable[..., Daemon], r: redis.Redis
) -> None:
    daemon = wired(APP_STREAM_MAXLEN="100")
    daemon.consumer.ensure_group()
    ids = Producer(r).submit_many(range(1, 1001))
    got = daemon.consumer.read(700, block_ms=100)
    assert len(got) == 700
    daemon.consumer.ack(*[m.id for m in got if m.id != ids[599]])  # the 600th stays pending
    daemon.maintenance.trim()
    left = [entry_id.decode() for entry_id, _ in r.xrange(S)]
    assert len(left) < 1000  # trimmed
    assert left[-401:] == ids[599:]  # the pending one, and all after it (acked or never read), kept
    pending = r.xpending_range(S, G, min="-", max="+", count=10)
    assert [p["message_id"].decode() for p in pending] == [ids[599]]


# -- consumer reaper -------------------------------------------------------------------------------------


def consumer_names(r: redis.Redis) -> set[str]:
    return {c["name"].decode() for c in r.xinfo_consumers(S, G)}


def test_the_reaper_removes_only_consumers_that_own_nothing_and_were_idle_an_hour(
    wired: Callable[..., Daemon], r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = wired("me")
    busy, gone = wired("busy"), wired("gone")
    me.consumer.ensure_group()
    Producer(r).submit_task(1)
    assert len(busy.consumer.read(1, block_ms=10)) == 1  # owns an entry
    for daemon in (gone, me):
        assert daemon.consumer.read(1, block_ms=10) == []  # joined, owns nothing
    wait_until(lambda: min(c["idle"] for c in r.xinfo_consumers(S, G)) >= 400, 5, what="all idle 0.4 s")
    me.maintenance.reap()  # with the real limit: idle for far less than an hour, nobody goes
    assert consumer_names(r) == {"me", "busy", "gone"}
    wired("fresh").consumer.read(1, block_ms=10)
    monkeypatch.setattr(maintenance, "REAP_IDLE_MS", 300)  # the hour, shortened
    me.maintenance.reap()
    # "gone": idle, nothing owned. "busy" owns an entry, "fresh" was just active, "me" is the caller
    assert consumer_names(r) == {"me", "busy", "fresh"}


# -- run-lock sweep --------------------------------------------------------------------------------------


def test_the_sweep_deletes_locks_naming_no_live_run_and_counts_them(
    wired: Callable[..., Daemon], r: redis.Redis
) -> None:
    daemon = wired()
    daemon.consumer.ensure_group()
    queued = Producer(r).submit_task(20)
    r.set(keys.run_lock_key(S, 20), queued)  # names a queued entry: live
    parked = locked_read(daemon, 23)
    assert daemon.consumer.requeue(parked, delay_s=60)  # the lock names the parked retry: live
    r.set(keys.run_lock_key(S, 21), "1-1")  # names an entry that is not there: leaked
    r.set(keys.run_lock_key(S, 22), "junk")
    assert daemon.maintenance.sweep_locks() is None  # the pass is complete
    assert value(daemon.metrics.run_locks_healed) == 2
    assert [t for t in (20, 21, 22, 23) if r.exists(keys.run_lock_key(S, t))] == [20, 23]


def test_a_sweep_of_a_large_keyspace_goes_on_a_second_later_until_the_pass_is_done(
    wired: Callable[..., Daemon], r: redis.Redis
) -> None:
    daemon = wired()
    daemon.consumer.ensure_group()
    pipe = r.pipeline(transaction=False)
    for i in range(30_000):  # more than one call's SCAN pages
        pipe.set(f"filler:{i}", "x")
    for task in range(1, 51):
        pipe.set(keys.run_lock_key(S, task), "1-1")
    pipe.execute()
    answers = [daemon.maintenance.sweep_locks()]
    while answers[-1] is not None and len(answers) < 50:
        answers.append(daemon.maintenance.sweep_locks())
    assert answers[0] == 1.0 and answers[-1] is None and set(answers[:-1]) == {1.0}
    assert value(daemon.metrics.run_locks_healed) == 50
    assert not r.keys(keys.run_lock_prefix(S) + "*")


# -- the timer thread the jobs run on --------------------------------------------------------------------


def unreachable_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # nothing listens there any more: connection refused


def test_a_job_without_redis_backs_off_doubling_capped_at_its_period_then_recovers(
    wired: Callable[..., Daemon], caplog: pytest.LogCaptureFixture
) -> None:
    down, up = wired("down", REDIS_URL=unreachable_url()), wired("up")
    mover = job(down, "delayed-retry mover")  # period 1 s
    waits: list[float] = []  # how long the timer waited after each run, from the due time it set
    calls: list[float] = []
    done = threading.Event()
    real_run = mover.run

    def run() -> float | None:
        now = time.monotonic()
        if calls:
            waits.append(mover.due - calls[-1])
        calls.append(now)
        if len(calls) <= 3:
            return real_run()  # Redis refuses the connection
        done.set()
        return up.maintenance.move_due()  # Redis is back

    mover.run = run
    stopping = threading.Event()
    timer = TimerThread("maintenance", [mover], stopping)
    with caplog.at_level(logging.INFO, logger="scheduler.daemon.timers"):
        timer.start()
        assert done.wait(10)
        stopping.set()
        timer.join(2)
    # 0.2 s * 2^failures, never past the job's period (each wait is measured from a moment just after the
    # timer's own clock reading, so it can only come out a little short)
    assert len(waits) == 3
    assert all(
        expected - 0.1 <= wait <= expected + 1e-6
        for wait, expected in zip(waits, (0.4, 0.8, 1.0), strict=True)
    )
    assert mover.failures == 0
    lines = [
        (rec.levelno, rec.getMessage()) for rec in caplog.records if rec.name == "scheduler.daemon.timers"
    ]
    assert len(lines) == 2 and lines[0][0] == logging.WARNING and "retrying in 0.4s" in lines[0][1]
    assert lines[1] == (logging.INFO, "delayed-retry mover recovered after 3 failures")
    assert not any(rec.exc_info for rec in caplog.records)


def test_the_mover_runs_again_when_the_next_retry_is_due_not_a_period_later(
    wired: Callable[..., Daemon], r: redis.Redis
) -> None:
    daemon = wired()
    msg = locked_read(daemon, 7)
    assert daemon.consumer.requeue(msg, delay_s=0.2)
    parked = time.monotonic()
    stopping = threading.Event()
    timer = TimerThread("maintenance", [job(daemon, "delayed-retry mover")], stopping)  # period 1 s
    timer.start()
    try:
        wait_until(lambda: r.xlen(S) == 2, 5, interval=0.01, what="the retry moved")
        assert time.monotonic() - parked < 0.8  # at its due time (0.2 s), not at the next period (1 s)
    finally:
        stopping.set()
        timer.join(2)


def test_run_soon_runs_a_job_at_once_and_a_stop_is_prompt(
    wired: Callable[..., Daemon], r: redis.Redis
) -> None:
    daemon = wired()
    daemon.consumer.ensure_group()
    sweep = daemon.maintenance.sweep_job  # period 30 s
    stopping = threading.Event()
    timer = TimerThread("maintenance-soon", [sweep], stopping)
    timer.start()
    wait_until(lambda: sweep.due > 0, 5, what="the first sweep")
    lock = keys.run_lock_key(S, 31)
    r.set(lock, "1-1")  # e.g. a payload-lost dead letter's task: the daemon asks for a sweep now
    timer.run_soon(sweep)
    wait_until(lambda: not r.exists(lock), 2, what="the sweep run at once")
    started = time.monotonic()
    stopping.set()
    timer.join(2)
    assert time.monotonic() - started < 0.5
    assert "maintenance-soon" not in {thread.name for thread in threading.enumerate()}
