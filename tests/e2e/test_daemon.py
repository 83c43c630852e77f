"""The daemon as operators run it: ``goodshunter-scheduler run`` subprocesses, real Redis, real fake crawler."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import redis

from scheduler.tasks.registry import TaskSpec
from tests.crawler_fixtures import StubProcess
from tests.e2e.support import (
    Daemons,
    dead_letters,
    pending_count,
    read_calls,
    register,
    results,
    statuses,
    wait_until,
)


def test_two_daemons_crawl_2000_tasks_each_entry_acked_once(
    r: redis.Redis,
    crawler_process: Callable[..., StubProcess],
    daemons: Callable[..., Daemons],
    tmp_path: Path,
) -> None:
    calls_log = tmp_path / "calls.jsonl"
    crawler = crawler_process("--calls-log", str(calls_log))
    group = daemons(crawler.address)
    first, second = group.start("d1", workers=16), group.start("d2", workers=16)
    ids = register(r, (TaskSpec(task_id, f"item {task_id}") for task_id in range(1, 2001)))

    wait_until(lambda: r.xlen("goodshunter:task:queue:results") >= 2000, 90, 0.2, "2000 results")
    wait_until(lambda: pending_count(r) == 0, 10, what="pending 0")
    published = results(r)
    assert sorted(entry["entry_id"] for entry in published) == sorted(ids)  # each entry ended exactly once
    assert set(statuses(r, range(1, 2001)).values()) == {"success"}
    assert Counter(int(c["task_id"]) for c in read_calls(calls_log)) == Counter(range(1, 2001))
    assert all(int(entry["total_found"]) > 0 for entry in published[:10])
    by_consumer = Counter(
        line.get("consumer")
        for d in (first, second)
        for line in d.logs()
        if line.get("msg") == "task success"
    )
    assert by_consumer["d1"] > 0 and by_consumer["d2"] > 0 and sum(by_consumer.values()) == 2000
    assert first.stop() == 0 and second.stop() == 0


def test_retry_and_dead_letter_paths_follow_the_documented_call_counts(
    r: redis.Redis,
    crawler_process: Callable[..., StubProcess],
    daemons: Callable[..., Daemons],
    tmp_path: Path,
) -> None:
    calls_log = tmp_path / "calls.jsonl"
    crawler = crawler_process("--calls-log", str(calls_log))
    group = daemons(crawler.address)
    daemon = group.start("d1")
    register(r, [TaskSpec(1, "flaky;fail=UNKNOWN*2"), TaskSpec(2, "bad;fail=INVALID_ARGUMENT"),
                 TaskSpec(3, "down;fail=UNAVAILABLE")])  # fmt: skip

    wait_until(lambda: len(dead_letters(r)) == 2, 40, 0.1, "two dead letters")
    wait_until(lambda: pending_count(r) == 0 and r.zcard("goodshunter:task:queue:delayed") == 0, 10)
    calls = read_calls(calls_log)
    per_task = Counter(int(c["task_id"]) for c in calls)
    attempts, max_retry = 3, 3
    assert per_task == {1: 3, 2: 1, 3: attempts * (max_retry + 1)}  # the documented worst case: 12
    assert statuses(r, [1, 2, 3]) == {1: "success", 2: "failed", 3: "failed"}
    assert [e["task_id"] for e in results(r)] == ["1"]  # the flaky one acked once, with one result
    letters = {letter["payload"].split(",")[0]: letter for letter in dead_letters(r)}
    assert "INVALID_ARGUMENT" in letters['{"task_id":2']["reason"]
    assert letters['{"task_id":2']["reason"].startswith("permanent")
    assert letters['{"task_id":3']["reason"].startswith("max_retry: UNAVAILABLE")
    assert '"retry":4' in letters['{"task_id":3']["payload"]

    # back-off held in Redis between requeues: each run's first call waits at least the jittered minimum
    stamps = sorted(c["ts"] for c in calls if c["task_id"] == "3")
    runs = [stamps[i : i + attempts] for i in range(0, len(stamps), attempts)]
    gaps = [later[0] - earlier[-1] for earlier, later in pairwise(runs)]
    minimum = [0.2 * 2**k / 2 for k in range(max_retry)]  # base 200ms x 2^(retry-1), equal jitter
    assert all(gap >= low for gap, low in zip(gaps, minimum, strict=True)), gaps
    in_call = [b - a for run in runs for a, b in pairwise(run)]
    assert max(in_call) < min(gaps), (in_call, gaps)  # tenacity's in-call back-off is the short one
    assert daemon.stop() == 0


def test_hung_crawls_are_bounded_by_the_deadline_and_threads_stay_flat(
    r: redis.Redis,
    crawler_process: Callable[..., StubProcess],
    daemons: Callable[..., Daemons],
    tmp_path: Path,
) -> None:
    calls_log = tmp_path / "calls.jsonl"
    crawler = crawler_process("--calls-log", str(calls_log))
    group = daemons(
        crawler.address, APP_CRAWLER_DEADLINE="500ms", APP_CRAWLER_ATTEMPTS="2", APP_MAX_RETRY="0"
    )
    daemon = group.start("d1", workers=4)
    # the pool starts its four threads lazily: fill it once before counting
    register(r, [TaskSpec(task_id, "warm up;delay=300") for task_id in range(1, 9)])
    wait_until(lambda: set(statuses(r, range(1, 9)).values()) == {"success"}, 10)
    threads_before = daemon.threads()
    register(r, [TaskSpec(task_id, "stuck;hang") for task_id in range(10, 30)])

    wait_until(lambda: len(dead_letters(r)) == 20, 60, 0.1, "20 hung tasks dead-lettered")
    hung = [c for c in read_calls(calls_log) if int(c["task_id"]) >= 10]
    assert len(hung) == 20 * 2
    assert {c["code"] for c in hung} == {"DEADLINE_EXCEEDED"}
    assert max(c["duration_ms"] for c in hung) < 500 + 400  # no worker held past the deadline
    assert daemon.threads() <= threads_before + 1  # nothing piles up behind hung calls
    assert daemon.stop() == 0


def test_a_long_crawl_keeps_its_lease_and_is_not_reclaimed(
    r: redis.Redis,
    crawler_process: Callable[..., StubProcess],
    daemons: Callable[..., Daemons],
    tmp_path: Path,
) -> None:
    calls_log = tmp_path / "calls.jsonl"
    crawler = crawler_process("--calls-log", str(calls_log))
    group = daemons(crawler.address, APP_LEASE_TIMEOUT="1s", APP_RECLAIM_INTERVAL="200ms")
    first = group.start("d1", workers=2)
    register(r, [TaskSpec(1, "slow;delay=3000")])  # 3 x lease_timeout
    wait_until(lambda: read_calls(calls_log), 5, what="crawl started")
    second = group.start("d2", workers=2)
    wait_until(lambda: statuses(r, [1])[1] == "success", 10)
    time.sleep(0.5)
    assert len(read_calls(calls_log)) == 1
    assert pending_count(r) == 0
    assert not [line for line in second.logs() if "reclaimed" in str(line.get("msg"))]
    assert first.stop() == 0 and second.stop() == 0


def test_sigterm_finishes_in_flight_crawls_and_leaves_nothing_pending(
    r: redis.Redis,
    crawler_process: Callable[..., StubProcess],
    daemons: Callable[..., Daemons],
    tmp_path: Path,
) -> None:
    calls_log = tmp_path / "calls.jsonl"
    crawler = crawler_process("--calls-log", str(calls_log), "--delay-ms", "700")
    daemon = daemons(crawler.address).start("d1", workers=6)
    register(r, [TaskSpec(task_id, f"item {task_id}") for task_id in range(1, 41)])
    wait_until(lambda: pending_count(r) >= 6, 5, what="six crawls in flight")
    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(20) == 0
    crawled = {int(c["task_id"]) for c in read_calls(calls_log)}
    assert 6 <= len(crawled) < 40  # it stopped reading, but finished what it held
    assert set(statuses(r, crawled).values()) == {"success"}
    assert pending_count(r) == 0  # nothing left pending by that daemon
    messages = [line.get("msg", "") for line in daemon.logs()]
    assert any("draining" in str(m) for m in messages) and "daemon stopped" in messages


def test_a_restart_after_the_lease_ran_out_runs_its_own_entries_once(
    r: redis.Redis,
    crawler_process: Callable[..., StubProcess],
    daemons: Callable[..., Daemons],
    tmp_path: Path,
) -> None:
    calls_log = tmp_path / "calls.jsonl"
    crawler = crawler_process("--calls-log", str(calls_log))
    group = daemons(crawler.address, APP_LEASE_TIMEOUT="1s", APP_RECLAIM_INTERVAL="200ms")
    first = group.start("d1", workers=4)
    register(r, [TaskSpec(task_id, f"slow {task_id};delay=1500") for task_id in range(1, 5)])
    wait_until(lambda: pending_count(r) == 4, 5, what="four crawls in flight")
    first.kill()
    time.sleep(1.5)  # longer than the lease: the entries are idle and still pending for d1
    second = group.start("d1", workers=4)
    wait_until(lambda: set(statuses(r, range(1, 5)).values()) == {"success"}, 15)
    time.sleep(0.5)
    ok = Counter(int(c["task_id"]) for c in read_calls(calls_log) if c["code"] == "OK")
    assert ok == Counter(range(1, 5))  # resumed once each, not also through reclaim
    assert sorted(int(e["task_id"]) for e in results(r)) == [1, 2, 3, 4]
    assert second.stop() == 0


def test_leases_are_renewed_while_draining(
    r: redis.Redis,
    crawler_process: Callable[..., StubProcess],
    daemons: Callable[..., Daemons],
    tmp_path: Path,
) -> None:
    calls_log = tmp_path / "calls.jsonl"
    crawler = crawler_process("--calls-log", str(calls_log))
    group = daemons(crawler.address, APP_LEASE_TIMEOUT="1s", APP_RECLAIM_INTERVAL="200ms")
    draining = group.start("d1", workers=2)
    register(r, [TaskSpec(1, "long;delay=3500")])
    wait_until(lambda: pending_count(r) == 1, 5)
    draining.signal(signal.SIGTERM)
    other = group.start("d2", workers=2)
    assert draining.process.wait(15) == 0
    wait_until(lambda: statuses(r, [1])[1] == "success", 5)
    assert [c["code"] for c in read_calls(calls_log)] == ["OK"]  # not reclaimed mid-drain
    assert not [line for line in other.logs() if "reclaimed" in str(line.get("msg"))]
    assert other.stop() == 0
