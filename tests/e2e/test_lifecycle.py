"""Periodic runs, duplicates and stop, with several real daemons (console scripts), Redis and crawler."""

from __future__ import annotations

import os
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import redis

from scheduler.config.load import load_settings
from scheduler.devtools.redis_server import RedisServer
from scheduler.tasks.lifecycle import Lifecycle
from scheduler.tasks.registry import TaskSpec
from tests.crawler_fixtures import StubProcess
from tests.e2e.support import SCHEDULER, Daemons, dead_letters, read_calls, statuses, wait_until


def lifecycle(redis_server: RedisServer, client: redis.Redis) -> Lifecycle:
    return Lifecycle(load_settings(env={"REDIS_URL": redis_server.url}), client)


def cli(redis_server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_server.url}
    return subprocess.run([str(SCHEDULER), *args], env=env, capture_output=True, text=True, timeout=30)


def calls_by_task(path: Path) -> dict[int, list[dict[str, float]]]:
    by_task: dict[int, list[dict[str, float]]] = defaultdict(list)
    for call in read_calls(path):
        by_task[int(call["task_id"])].append(call)
    return by_task


def test_three_daemons_run_each_task_once_per_period(
    r: redis.Redis,
    redis_server: RedisServer,
    crawler_process: Callable[..., StubProcess],
    daemons: Callable[..., Daemons],
    tmp_path: Path,
) -> None:
    calls_log = tmp_path / "calls.jsonl"
    crawler = crawler_process("--calls-log", str(calls_log), "--delay-ms", "30")
    group = daemons(crawler.address)
    running = [group.start(f"d{i}", workers=8) for i in (1, 2, 3)]
    interval = 2.0
    lifecycle(redis_server, r).register(
        [TaskSpec(t, f"watch {t}", interval_s=interval) for t in range(1, 51)]
    )
    time.sleep(20 - 0.5)  # runs at 0, 2, ... 18 s
    for daemon in running:
        assert daemon.stop() == 0

    by_task = calls_by_task(calls_log)
    assert sorted(by_task) == list(range(1, 51))
    counts = {task: len(calls) for task, calls in by_task.items()}
    assert all(9 <= n <= 11 for n in counts.values()), counts  # 10 ± 1, not 30
    for calls in by_task.values():
        starts = sorted(c["ts"] for c in calls)
        assert min(b - a for a, b in pairwise(starts)) >= 0.9 * interval
        ordered = sorted(calls, key=lambda c: c["ts"])
        for earlier, later in pairwise(ordered):  # never two crawls of one task at once
            assert later["ts"] >= earlier["ts"] + earlier["duration_ms"] / 1000 - 0.005
    served = {line.get("consumer") for d in running for line in d.logs() if line.get("msg") == "task success"}
    assert served == {"d1", "d2", "d3"}


def test_a_hung_run_is_not_published_again_and_a_stop_cancels_it(
    r: redis.Redis,
    redis_server: RedisServer,
    crawler_process: Callable[..., StubProcess],
    daemons: Callable[..., Daemons],
    tmp_path: Path,
) -> None:
    calls_log = tmp_path / "calls.jsonl"
    crawler = crawler_process("--calls-log", str(calls_log))
    group = daemons(crawler.address, APP_CRAWLER_DEADLINE="60s")
    daemon = group.start("d1", workers=4)
    assert (
        cli(redis_server, "task", "add", "--id", "77", "--keyword", "stuck;hang", "--every", "1s").returncode
        == 0
    )
    wait_until(lambda: (daemon.logs() and any(line.get("task_id") == 77 for line in daemon.logs())) or
               r.exists("goodshunter:task:queue:inflight:77"), 5)  # fmt: skip
    time.sleep(3.2)  # three periods pass while the crawl hangs
    assert read_calls(calls_log) == []  # the stub logs a call when it ends: still hanging
    assert r.xlen("goodshunter:task:queue") == 1  # not published again behind the hung run
    assert any("skipped" in str(line.get("msg")) for line in daemon.logs())

    result = cli(redis_server, "stop", "77")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: read_calls(calls_log), 1.5, what="the hung call to end")
    [call] = read_calls(calls_log)
    assert call["code"] == "CANCELLED"
    stopped_at = float(r.hget("goodshunter:task:spec:77", "stopped_at") or 0)  # when the stop took effect
    assert call["ts"] + call["duration_ms"] / 1000 - stopped_at < 1.0  # cancelled within a second
    time.sleep(3.2)  # three more periods: nothing runs, nothing is retried or dead-lettered
    assert len(read_calls(calls_log)) == 1
    assert dead_letters(r) == [] and r.zcard("goodshunter:task:queue:delayed") == 0
    assert statuses(r, [77])[77] != "failed"
    assert any(line.get("stopped_by") == "cli" or "stop" in str(line.get("msg")) for line in daemon.logs())

    # registering it again starts it again
    assert (
        cli(redis_server, "task", "add", "--id", "77", "--keyword", "fixed", "--every", "1s").returncode == 0
    )
    wait_until(lambda: len(read_calls(calls_log)) >= 3, 5, what="runs resumed")
    assert statuses(r, [77])[77] == "success"
    assert daemon.stop() == 0


def test_after_downtime_each_task_runs_once_then_on_its_period(
    r: redis.Redis,
    redis_server: RedisServer,
    crawler_process: Callable[..., StubProcess],
    daemons: Callable[..., Daemons],
    tmp_path: Path,
) -> None:
    calls_log = tmp_path / "calls.jsonl"
    crawler = crawler_process("--calls-log", str(calls_log))
    group = daemons(crawler.address)
    first = group.start("d1", workers=4)
    tasks = range(1, 11)
    lifecycle(redis_server, r).register([TaskSpec(t, f"k{t}", interval_s=1.0) for t in tasks])
    wait_until(lambda: all(len(c) >= 2 for c in calls_by_task(calls_log).values()) and
               len(calls_by_task(calls_log)) == 10, 5)  # fmt: skip
    assert first.stop() == 0
    down_at = time.time()
    time.sleep(5)  # five periods missed
    second = group.start("d1", workers=4)
    up_at = time.time()
    time.sleep(2.6)
    assert second.stop() == 0

    for task, calls in calls_by_task(calls_log).items():
        after = sorted(c["ts"] for c in calls if c["ts"] > down_at)
        assert after, f"task {task} never ran after the restart"
        assert after[0] - up_at < 1.0  # it runs once right away ...
        assert len([ts for ts in after if ts - up_at < 0.9]) == 1  # ... once, not five catch-up runs
        assert 2 <= len(after) <= 4  # then on its period
        # spacing: no catch-up burst (the 0.9 x bound is the 3-daemon test's; 1 s periods on two busy
        # cores jitter by a tenth or two)
        assert all(b - a >= 0.7 for a, b in pairwise(after)), after


def test_a_burst_of_executes_for_an_idle_task_crawls_it_once(
    r: redis.Redis,
    redis_server: RedisServer,
    crawler_process: Callable[..., StubProcess],
    daemons: Callable[..., Daemons],
    tmp_path: Path,
) -> None:
    calls_log = tmp_path / "calls.jsonl"
    crawler = crawler_process("--calls-log", str(calls_log), "--delay-ms", "50")
    daemon = daemons(crawler.address).start("d1", workers=8)
    assert (
        cli(redis_server, "task", "add", "--id", "5", "--keyword", "camera", "--every", "1h").returncode == 0
    )
    wait_until(lambda: len(read_calls(calls_log)) == 1, 5)  # its first run, then idle
    result = cli(redis_server, "submit", "5", "5", "5", "5", "5")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 5
    wait_until(lambda: len(read_calls(calls_log)) == 2, 5)
    # the four behind the first run's delivery wait for it (deferred), then find it started after them
    wait_until(lambda: len([line for line in daemon.logs() if line.get("outcome") == "duplicate"]) == 4, 10)
    time.sleep(1.5)
    assert len(read_calls(calls_log)) == 2  # one crawl for the five
    assert daemon.stop() == 0
