"""Read-ahead (``intake``): a few entries more than the free workers are read while crawls are quick, and
none of them can get stuck behind crawls that do not end. Real Redis, the real fake crawler, the daemon
in-process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from crawler_stub import CrawlerStub
from scheduler.config.load import load_settings
from scheduler.daemon import intake
from scheduler.daemon.app import Daemon
from scheduler.daemon.leases import Running
from scheduler.daemon.outcomes import CIRCUIT_OPEN, Skip, Success
from scheduler.devtools.redis_server import RedisServer
from scheduler.taskqueue import Producer, StreamMessage, keys
from scheduler.taskqueue.message import decode
from scheduler.tasks.registry import RedisTaskRegistry, TaskSpec
from tests.daemon_parts import wired_daemons
from tests.e2e.support import pending_count, statuses, wait_until

STREAM = keys.DEFAULT_STREAM


WARM_UP = 100  # a quick task crawled first: read-ahead waits for a crawl to prove crawls are quick


class Started:
    def __init__(self, daemon: Daemon, r: redis.Redis) -> None:
        self.daemon = daemon
        self.thread = threading.Thread(target=daemon.run)
        self.thread.start()
        assert daemon.started.wait(10)
        if daemon.intake.ahead:
            RedisTaskRegistry(r).put_many([TaskSpec(WARM_UP, "warm up")])
            Producer(r).submit_task(WARM_UP, "user_create")
            wait_until(lambda: daemon.intake._limit() > daemon.slots.size, 5, what="read-ahead on")
            wait_until(lambda: not daemon.leases, 5, what="the warm-up's ending written")

    def stop(self, force: bool = False) -> None:
        self.daemon.request_stop(force=force)
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def start(
    redis_server: RedisServer, r: redis.Redis, crawler_stub: CrawlerStub
) -> Iterator[Callable[..., Started]]:
    running: list[Started] = []

    def make(name: str, workers: int, **env: str) -> Started:
        settings = load_settings(
            env={
                "REDIS_URL": redis_server.url,
                "APP_CRAWLER_GRPC_ADDR": crawler_stub.address,
                "APP_CONSUMER_NAME": name,
                "APP_METRICS_PORT": "0",
                "APP_WORKER_POOL_SIZE": str(workers),
                "APP_SHUTDOWN_GRACE": "1s",
                **env,
            }
        )
        started = Started(Daemon(settings, handle_signals=False), r)
        running.append(started)
        return started

    yield make
    for started in running:
        if started.thread.is_alive():
            started.stop(force=True)


def processed(d: Daemon, outcome: str) -> float:
    return float(d.metrics.tasks_processed.labels(outcome)._value.get())


def crawls(stub: CrawlerStub, task_id: int) -> int:
    return len(stub.calls_for(task_id))


def hang_then_quick(r: redis.Redis, hung: int, quick: int) -> tuple[list[int], list[int]]:
    """``hung`` tasks whose crawls never end, then ``quick`` ones, queued in that order."""
    hung_ids, quick_ids = list(range(1, hung + 1)), list(range(hung + 1, hung + quick + 1))
    RedisTaskRegistry(r).put_many(
        [TaskSpec(t, f"h{t};hang") for t in hung_ids] + [TaskSpec(t, f"q{t}") for t in quick_ids]
    )
    Producer(r).submit_many(hung_ids + quick_ids, "user_create")
    return hung_ids, quick_ids


def test_entries_read_ahead_of_hung_crawls_go_back_to_the_stream_for_another_daemon(
    start: Callable[..., Started], crawler_stub: CrawlerStub, r: redis.Redis
) -> None:
    a = start("a", workers=8)  # 8 workers: 2 entries read ahead
    assert a.daemon.intake.ahead == 2
    _, quick = hang_then_quick(r, 8, 2)
    wait_until(lambda: crawler_stub.active_calls == 8, 5, what="every worker on a hung crawl")
    # the two quick tasks were read, and wait behind the hung crawls: held by a, not started
    wait_until(lambda: len(a.daemon.leases) == 10, 2, what="two entries read ahead")
    assert all(crawls(crawler_stub, t) == 0 for t in quick)
    # not started within AHEAD_WAIT_S: given back (no retry counted), and a reads no more ahead
    wait_until(lambda: processed(a.daemon, "given_back") == 2, 5, what="the waiting entries given back")
    assert pending_count(r) == 8 and a.daemon.metrics.retries._value.get() == 0
    assert a.daemon.intake._limit() == 8  # paused, and not quick until a crawl ends quickly again
    b = start("b", workers=2)
    wait_until(lambda: statuses(r, quick) == {t: "success" for t in quick}, 10, what="b crawled them")
    assert [crawls(crawler_stub, t) for t in quick] == [1, 1]
    assert processed(b.daemon, "success") == 2 and processed(a.daemon, "success") == 1  # a: the warm-up
    readded = [decode(fields[b"data"]) for _, fields in r.xrange(STREAM)]
    # each quick task's entry, and its re-add after it (an acked entry stays in the stream until trimmed)
    assert sorted(m.task_id for m in readded if m.task_id in quick) == [9, 9, 10, 10]
    assert all(m.retry == 0 for m in readded)  # no retry spent on the give-back


def test_a_stop_read_ahead_is_applied_while_every_worker_hangs(
    start: Callable[..., Started], crawler_stub: CrawlerStub, r: redis.Redis
) -> None:
    """Stops have a thread of their own: one read while every worker is on a hung crawl is applied at once
    (and cancels the crawl of its task) instead of waiting for a worker."""
    a = start("a", workers=4)  # one entry read ahead
    hang_then_quick(r, 4, 0)
    wait_until(lambda: crawler_stub.active_calls == 4, 5, what="every worker on a hung crawl")
    Producer(r).stop_task(2)
    wait_until(lambda: processed(a.daemon, "cancelled") == 1, 3, what="task 2's crawl cancelled by the stop")
    assert processed(a.daemon, "stop") == 1 and crawler_stub.active_calls == 3
    assert RedisTaskRegistry(r).get(2).status == "stopped"  # type: ignore[union-attr]


def test_the_grace_periods_end_gives_back_what_no_worker_started(
    start: Callable[..., Started], crawler_stub: CrawlerStub, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake, "AHEAD_WAIT_S", 60.0)  # only the shutdown gives it back
    a = start("a", workers=4)
    _, [waiting] = hang_then_quick(r, 4, 1)
    wait_until(lambda: len(a.daemon.leases) == 5, 5, what="one entry read ahead")
    a.stop()  # the hung crawls outlast the grace period: cancelled and left pending
    assert processed(a.daemon, "given_back") == 1
    assert pending_count(r) == 4  # the hung crawls' entries, for a restart or a reclaim
    unread = r.xreadgroup(keys.DEFAULT_GROUP, "probe", {STREAM: ">"})
    assert [decode(f[b"data"]).task_id for _, f in unread[0][1]] == [waiting]
    assert crawls(crawler_stub, waiting) == 0


def test_read_ahead_only_while_crawls_are_quick_and_the_circuit_is_closed(redis_url: str) -> None:
    with wired_daemons(redis_url, APP_WORKER_POOL_SIZE="16") as make:
        d = make()
        assert d.intake.ahead == 4 and d.intake._limit() == 16  # until a crawl has ended quickly
        d.intake.crawl_s = intake.AHEAD_QUICK_S / 10
        assert d.intake._limit() == 20
        d.intake.crawl_s = intake.AHEAD_QUICK_S * 2  # slow crawls: nothing gained, entries would wait
        assert d.intake._limit() == 16
        d.intake.crawl_s = 0.0
        d.breaker.force_open()
        assert d.intake._limit() == 16
    with wired_daemons(redis_url, APP_WORKER_POOL_SIZE="3") as make:
        assert make("small").intake._limit() == 3  # a pool under 4: no read-ahead


def test_a_crawl_started_after_the_circuit_opened_goes_back_unspent(
    redis_url: str, r: redis.Redis, crawler_stub: CrawlerStub
) -> None:
    """Read while the circuit was closed, started after it opened: no call, no retry, back on the
    stream (the half-open probe still goes out)."""
    with wired_daemons(redis_url, crawler=crawler_stub.address, connect=True) as make:
        d = make()
        RedisTaskRegistry(r).put_many([TaskSpec(5, "k5")])
        Producer(r).submit_task(5, "user_create")
        d.consumer.ensure_group()
        [msg] = d.consumer.read(1, block_ms=100)
        spec = d.registry.get(5)
        d.breaker.force_open()
        assert d.runner.run(Running(msg), spec) is CIRCUIT_OPEN
        assert crawler_stub.calls == []
        assert isinstance(d.runner.run(Running(msg, probe=True), spec), Success)
        assert crawls(crawler_stub, 5) == 1


class BusyPool:
    """Stands in for a worker pool whose threads are all busy: it takes calls, and runs them (in order)
    only when the test says so."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        self.calls.append((fn, args))

    def run_all(self) -> None:
        while self.calls:
            fn, args = self.calls.pop(0)
            fn(*args)


def handed_over(d: Daemon, r: redis.Redis, task_id: int, action: str = "execute") -> Running:
    """One entry of the task read and handed to the (busy) pools, as a read-ahead is; its hold."""
    if action == "stop":
        Producer(r).stop_task(task_id)
    else:
        Producer(r).submit_task(task_id, "user_create")
    d.consumer.ensure_group()
    [msg] = d.consumer.read(1, block_ms=100)
    return hand_over_again(d, msg)


def hand_over_again(d: Daemon, msg: StreamMessage) -> Running:
    d.slots.take(1)
    d.intake._dispatch([msg], {msg.message.task_id: d.registry.get(msg.message.task_id)}, {msg.id: "run"}, 0,
                       False)  # fmt: skip
    return d.leases._held[msg.id]


def test_a_hold_given_back_and_still_queued_never_takes_a_later_hold_of_the_entry(
    redis_url: str, r: redis.Redis, crawler_stub: CrawlerStub
) -> None:
    """Review finding: given back, its ending not written (Redis refused it), the entry is recovered and
    handed over again while the first hand-over's call still waits in the pool's queue. That call must
    not take the new hold: the entry would be held for ever, never started, its slot and run lock kept."""
    with wired_daemons(redis_url, crawler=crawler_stub.address, connect=True) as make:
        d = make()
        pool = d.intake.workers = BusyPool()  # type: ignore[assignment]
        d.intake.stops = BusyPool()  # type: ignore[assignment]
        RedisTaskRegistry(r).put_many([TaskSpec(7, "k7")])
        first = handed_over(d, r, 7)
        first.started -= intake.AHEAD_WAIT_S
        assert d.intake.give_back_stale() == 1 and d.slots.busy == 0
        d.leases.forget(first)  # the writer gave up on its ending: left pending, not held
        hand_over_again(d, first.msg)  # the recovery hands the same entry over again
        pool.run_all()  # workers free up: the given-back hand-over's call comes first, then the new one
        assert crawls(crawler_stub, 7) == 1
        assert d.slots.busy == 0 and not d.intake._waiting


def test_stops_waiting_for_their_thread_hold_no_slot_and_are_never_given_back(
    redis_url: str, r: redis.Redis
) -> None:
    """Review findings: stops queued behind a slow one (a slow database) first held worker slots with no
    bound; then, under the 1 s give-back, were re-added behind the backlog again and again, and each
    give-back paused read-ahead. A stop takes no worker: no slot, never given back, and applied once
    its thread comes to it (held meanwhile, counted against the reads like an outcome owed)."""
    with wired_daemons(redis_url) as make:
        d = make()
        d.intake.workers = BusyPool()  # type: ignore[assignment]
        stops = d.intake.stops = BusyPool()  # type: ignore[assignment]
        RedisTaskRegistry(r).put_many([TaskSpec(7, "k7"), TaskSpec(8, "k8")])
        time.sleep(0.01)  # a stop made in the registration's own millisecond is ordered before it (stale)
        held = [handed_over(d, r, t, action="stop") for t in (7, 8)]
        assert d.slots.busy == 0 and len(d.leases) == 2  # held, no worker slot taken
        for h in held:
            h.started -= 10 * intake.AHEAD_WAIT_S
        d.intake.crawl_s = 0.0
        assert d.intake.give_back_stale() == 0
        assert d.intake._limit() == d.slots.size + d.intake.ahead  # read-ahead not paused by stops
        stops.run_all()  # the stops thread comes to them late: applied, once each
        d.writer.start().close(5.0)
        assert [RedisTaskRegistry(r).get(t).status for t in (7, 8)] == ["stopped", "stopped"]  # type: ignore[union-attr]
        assert pending_count(r) == 0 and r.xlen(STREAM) == 2  # nothing re-added
        assert d.slots.busy == 0 and not d.leases


def test_a_crawl_started_while_the_circuit_is_half_open_goes_back_unless_it_is_the_probe(
    redis_url: str, r: redis.Redis, crawler_stub: CrawlerStub
) -> None:
    with wired_daemons(redis_url, crawler=crawler_stub.address, connect=True,
                       APP_BREAKER_OPEN_DURATION="0.2s") as make:  # fmt: skip
        d = make()
        RedisTaskRegistry(r).put_many([TaskSpec(5, "k5")])
        Producer(r).submit_task(5, "user_create")
        d.consumer.ensure_group()
        [msg] = d.consumer.read(1, block_ms=100)
        d.breaker.force_open()
        wait_until(lambda: d.breaker.state == "half_open", 2)
        given_back = Running(msg)
        assert d.runner.run(given_back, d.registry.get(5)) is CIRCUIT_OPEN
        assert crawler_stub.calls == [] and not given_back.fetched  # no crawl: read-ahead's average untouched
        stopped = Running(msg, cancel_reason="stopped")  # a stop cancelled it while it waited: acked
        stopped.token.cancel()
        assert d.runner.run(stopped, d.registry.get(5)) == Skip("cancelled")
        probe = Running(msg, probe=True)
        assert isinstance(d.runner.run(probe, d.registry.get(5)), Success) and probe.fetched
        assert crawls(crawler_stub, 5) == 1
