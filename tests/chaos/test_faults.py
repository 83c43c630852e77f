"""Faults while daemons run: a daemon killed with work in hand, the crawler down, Redis killed and back."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import redis

from scheduler.devtools.redis_server import RedisServer, free_port
from scheduler.tasks.registry import TaskSpec
from tests.crawler_fixtures import STUB_SCRIPT, StubProcess
from tests.e2e.support import Daemons, dead_letters, pending_count, read_calls, register, statuses, wait_until


def test_kill_9_of_one_daemon_loses_nothing_and_duplicates_at_most_its_in_flight(
    r: redis.Redis,
    crawler_process: Callable[..., StubProcess],
    daemons: Callable[..., Daemons],
    tmp_path: Path,
) -> None:
    calls_log = tmp_path / "calls.jsonl"
    crawler = crawler_process("--calls-log", str(calls_log), "--delay-ms", "150")
    group = daemons(crawler.address)
    victim, survivor = group.start("d1", workers=4), group.start("d2", workers=4)
    tasks = range(1, 121)
    register(r, [TaskSpec(task_id, f"item {task_id}") for task_id in tasks])
    wait_until(lambda: len(read_calls(calls_log)) >= 30, 15, what="work under way")
    victim.kill()
    killed_at = time.monotonic()

    wait_until(lambda: set(statuses(r, tasks).values()) == {"success"}, 30, 0.1, "every task crawled")
    assert time.monotonic() - killed_at < 2.0 + 15  # lease_timeout + a few seconds of remaining work
    wait_until(lambda: pending_count(r) == 0, 10, what="nothing pending")
    per_task = Counter(int(c["task_id"]) for c in read_calls(calls_log))
    assert set(per_task) == set(tasks)  # no task lost
    duplicates = sum(n - 1 for n in per_task.values())
    assert duplicates <= 4  # at most the dead daemon's in-flight crawls ran twice
    assert survivor.stop() == 0


def test_crawler_down_for_ten_seconds_dead_letters_nothing(
    r: redis.Redis, daemons: Callable[..., Daemons], tmp_path: Path
) -> None:
    port = free_port()
    calls_log = tmp_path / "calls.jsonl"

    def crawler() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(STUB_SCRIPT), "--port", str(port), "--calls-log", str(calls_log), "--delay-ms", "50"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    stub = crawler()
    try:
        daemon = daemons(f"127.0.0.1:{port}").start("d1", workers=4)
        tasks = range(1, 61)
        register(r, [TaskSpec(task_id, f"item {task_id}") for task_id in tasks])
        wait_until(lambda: len(read_calls(calls_log)) >= 8, 10, what="some crawls before the outage")
        stub.send_signal(signal.SIGKILL)
        stub.wait(5)
        time.sleep(10)
        stub = crawler()
        wait_until(lambda: set(statuses(r, tasks).values()) == {"success"}, 40, 0.2, "every task crawled")
        assert dead_letters(r) == []
        opened = [line for line in daemon.logs() if "-> open" in str(line.get("msg"))]
        assert opened, "the circuit breaker should have opened during the outage"
        assert daemon.stop() == 0
    finally:
        stub.kill()
        stub.wait(5)


def test_redis_killed_and_restarted_every_acknowledged_submission_is_crawled(
    redis_factory: Callable[..., RedisServer],
    crawler_process: Callable[..., StubProcess],
    daemons: Callable[..., Daemons],
    tmp_path: Path,
) -> None:
    server = redis_factory(appendonly=True)
    client = server.client()
    calls_log = tmp_path / "calls.jsonl"
    crawler = crawler_process("--calls-log", str(calls_log), "--delay-ms", "20")
    daemon = daemons(crawler.address, redis_url=server.url).start("d1", workers=4)
    register(client, [TaskSpec(task_id, f"item {task_id}") for task_id in range(1, 51)])
    wait_until(lambda: len(read_calls(calls_log)) >= 10, 10, what="crawls before the crash")

    server.kill()
    cpu_before = daemon.cpu_seconds()
    time.sleep(3)
    assert daemon.cpu_seconds() - cpu_before < 0.6  # waits the outage out; never spins
    server.restart()
    client = server.client()
    register(client, [TaskSpec(task_id, f"item {task_id}") for task_id in range(51, 101)])

    tasks = range(1, 101)
    wait_until(lambda: set(statuses(client, tasks).values()) == {"success"}, 45, 0.2, "all 100 crawled")
    assert set(Counter(int(c["task_id"]) for c in read_calls(calls_log))) == set(tasks)
    assert dead_letters(client) == []
    assert daemon.process.poll() is None  # it rode out the outage
    messages = [str(line.get("msg")) for line in daemon.logs()]
    assert any("Redis" in m for m in messages)
    assert daemon.stop() == 0
    client.close()


def test_shutdown_stays_within_the_grace_period_when_redis_is_gone(
    redis_factory: Callable[..., RedisServer],
    crawler_process: Callable[..., StubProcess],
    daemons: Callable[..., Daemons],
) -> None:
    server = redis_factory(appendonly=True)
    crawler = crawler_process("--delay-ms", "1500")
    daemon = daemons(
        crawler.address, redis_url=server.url, APP_SHUTDOWN_GRACE="3s", APP_LEASE_TIMEOUT="10s"
    ).start("d1", workers=2)
    register(server.client(), [TaskSpec(1, "a"), TaskSpec(2, "b")])
    wait_until(
        lambda: int(server.client().xpending("goodshunter:task:queue", "scheduler_group")["pending"]) == 2, 5
    )
    server.kill()  # the crawls finish but their outcomes cannot be written
    began = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(15) == 0
    assert time.monotonic() - began < 3 + 4  # grace, plus the cancel and close steps
