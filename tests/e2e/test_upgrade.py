"""Old and new daemons on one stream: a rolling upgrade from the previous release (6d2b5df) and its rollback.

Each test runs two daemons of different releases on one private Redis and one fake crawler, registers 100
tasks (20 of which fail once or twice, so retries are parked by one release and moved by the other), sends
stops and re-enables while both run, kills one release's daemon with SIGKILL mid-work (its entries are
reclaimed by the other) and starts a second daemon of the surviving release. Then, at rest: nothing lost,
nothing pending, duplicates bounded by what the killed daemon held, and a fresh execute of every task is
crawled within a lease and a few seconds ("nothing stuck").
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from scheduler.registry import RedisTaskRegistry, TaskSpec
from scheduler.taskqueue import Producer, keys
from tests.crawler_fixtures import StubProcess
from tests.e2e.previous_release import (
    NEW_SCHEDULER,
    PREVIOUS_COMMIT,
    NotInstallable,
    install_previous_release,
    start_daemon,
)
from tests.e2e.support import GROUP, STREAM, DaemonProcess, Daemons, pending_count, read_calls, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TASKS = range(1, 101)
FAILING = {t: 1 + t % 2 for t in range(1, 21)}  # task → failed runs before it succeeds (retries parked)
STOPPED = [3, 4, 40, 41, 70]  # stopped, then re-enabled by a user_create execute, while both releases run
LEASE_S = 3.0
ENV = {
    "APP_LEASE_TIMEOUT": f"{LEASE_S:g}s",
    "APP_RECLAIM_INTERVAL": "1s",
    "APP_METRICS_PORT": "0",
    "APP_CRAWLER_ATTEMPTS": "1",  # one failed call fails the run: fail=UNAVAILABLE*N parks N retries
    "APP_MAX_RETRY": "3",
    "APP_RETRY_BACKOFF_BASE": "400ms",
    "APP_RETRY_BACKOFF_MAX": "1s",
}
WORKERS = 4


@pytest.fixture(scope="session")
def previous_scheduler() -> Path:
    try:
        return install_previous_release()
    except NotInstallable as exc:
        pytest.skip(f"previous release {PREVIOUS_COMMIT} not installable: {exc}")


def keyword(task_id: int) -> str:
    fails = FAILING.get(task_id)
    return f"item {task_id}" + (f";fail=UNAVAILABLE*{fails}" if fails else "")


def run_locks(client: redis.Redis) -> dict[str, str]:
    prefix = keys.run_lock_prefix(STREAM)
    found = {k.decode(): client.get(k) for k in client.scan_iter(match=prefix + "*", count=1000)}
    return {k: v.decode() for k, v in found.items() if v is not None}


def pending_of(client: redis.Redis, consumer: str) -> list[str]:
    rows = client.xpending_range(STREAM, GROUP, "-", "+", 10_000, consumername=consumer)
    return [row["message_id"].decode() for row in rows]


def all_delivered(client: redis.Redis) -> bool:
    last = client.xinfo_stream(STREAM)["last-generated-id"]
    group = next(g for g in client.xinfo_groups(STREAM) if g["name"] == GROUP.encode())
    return bool(group["last-delivered-id"] == last)


def at_rest(client: redis.Redis, calls_log: Path, quiet_s: float = 1.0) -> Callable[[], bool]:
    """True once nothing is queued, pending or parked and the crawler got no call for ``quiet_s``."""
    seen = {"calls": -1, "since": time.monotonic()}

    def check() -> bool:
        calls = len(read_calls(calls_log))
        if calls != seen["calls"]:
            seen.update(calls=calls, since=time.monotonic())
            return False
        idle = pending_count(client) == 0 and client.zcard(keys.delayed_set(STREAM)) == 0
        return idle and all_delivered(client) and time.monotonic() - seen["since"] >= quiet_s

    return check


def lock_kinds(locks: dict[str, str]) -> Counter[str]:
    def kind(value: str) -> str:
        if not value.startswith("retry:"):
            return "entry"
        return "retry:<entry>:<due> (new)" if value.count(":") == 2 else "retry:<entry> (old)"

    return Counter(kind(v) for v in locks.values())


@dataclass
class Mixed:
    """What one mixed-release run observed; ``report`` is printed (pytest -s) and kept in assertion texts."""

    killed_held: list[str] = field(default_factory=list)  # entries pending to the killed daemon
    locks_at_kill: dict[str, str] = field(default_factory=dict)
    parked_at_kill: int = 0
    lost: list[int] = field(default_factory=list)  # tasks never crawled successfully
    duplicates: int = 0  # successful crawls beyond the first (re-enabled tasks excluded)
    duplicated_tasks: list[int] = field(default_factory=list)
    pending_at_rest: int = 0
    locks_at_rest: dict[str, str] = field(default_factory=dict)
    stuck: list[int] = field(default_factory=list)  # a fresh execute not crawled within lease + 5 s
    fresh_s: float = 0.0
    locks_after_fresh: dict[str, str] = field(default_factory=dict)
    tracebacks: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        return "\n".join(
            [
                f"killed daemon held {len(self.killed_held)} entries; {self.parked_at_kill} retries parked; "
                f"locks at the kill {dict(lock_kinds(self.locks_at_kill))}",
                f"lost {len(self.lost)} {self.lost}; duplicates {self.duplicates} (tasks {self.duplicated_tasks})",
                f"pending at rest {self.pending_at_rest}; locks at rest {len(self.locks_at_rest)} "
                f"{self.locks_at_rest}",
                f"fresh execute of all {len(TASKS)}: stuck {len(self.stuck)} {self.stuck}, "
                f"all crawled in {self.fresh_s:.1f}s; locks after {len(self.locks_after_fresh)} "
                f"{self.locks_after_fresh}",
                f"tracebacks per log {self.tracebacks}",
                *self.notes,
            ]
        )


def stop_and_reenable(client: redis.Redis) -> None:
    """Stops through the stream (either release may process each), then re-enables once each took effect."""
    producer = Producer(client)
    for task_id in STOPPED:
        producer.stop_task(task_id, "upgrade-test")
    spec_keys = [keys.task_spec_key(t) for t in STOPPED]

    def all_stopped() -> bool:
        pipe = client.pipeline(transaction=False)
        for key in spec_keys:
            pipe.hget(key, "status")
        return all(status == b"stopped" for status in pipe.execute())

    wait_until(all_stopped, 10, 0.05, "the stops processed")
    time.sleep(0.05)  # a re-enable made strictly after the stop (the previous release compares seconds)
    producer.submit_many(STOPPED, "user_create")


def mixed_run(
    client: redis.Redis,
    group: Daemons,
    calls_log: Path,
    *,
    doomed: tuple[Path, str],
    survivor: tuple[Path, str],
    replacement: tuple[Path, str],
) -> tuple[Mixed, list[DaemonProcess]]:
    seen = Mixed()
    survivors = [start_daemon(group, survivor[0], survivor[1], WORKERS)]
    killed = start_daemon(group, doomed[0], doomed[1], WORKERS)
    RedisTaskRegistry(client).put_many([TaskSpec(t, keyword(t)) for t in TASKS])
    Producer(client).submit_many(list(TASKS), "user_create")
    stop_and_reenable(client)
    # work in flight on the doomed daemon and retries parked by both releases
    wait_until(lambda: len(pending_of(client, doomed[1])) >= 2, 10, 0.02, f"{doomed[1]} holding entries")
    killed.kill()
    seen.killed_held = pending_of(client, doomed[1])
    seen.locks_at_kill = run_locks(client)
    seen.parked_at_kill = client.zcard(keys.delayed_set(STREAM))
    survivors.append(start_daemon(group, replacement[0], replacement[1], WORKERS))

    wait_until(at_rest(client, calls_log), 40, 0.2, "rest after the kill")
    calls = read_calls(calls_log)
    ok = Counter(int(c["task_id"]) for c in calls if c["code"] == "OK")
    seen.lost = [t for t in TASKS if ok[t] == 0]
    extra = {t: ok[t] - 1 for t in TASKS if ok[t] > 1 and t not in STOPPED}
    seen.duplicates, seen.duplicated_tasks = sum(extra.values()), sorted(extra)
    seen.pending_at_rest = pending_count(client)
    seen.locks_at_rest = run_locks(client)

    # nothing stuck: a fresh user execute of every task is crawled within a lease and a few seconds
    before = len(calls)
    started = time.monotonic()
    Producer(client).submit_many(list(TASKS), "user_create")

    def fresh_crawled() -> set[int]:
        return {int(c["task_id"]) for c in read_calls(calls_log)[before:] if c["code"] == "OK"}

    try:
        wait_until(lambda: len(fresh_crawled()) == len(TASKS), LEASE_S + 5, 0.1, "fresh executes crawled")
        seen.fresh_s = time.monotonic() - started
    except AssertionError:
        seen.fresh_s = time.monotonic() - started
    seen.stuck = sorted(set(TASKS) - fresh_crawled())
    wait_until(at_rest(client, calls_log, 0.5), 20, 0.2, "rest after the fresh executes")
    seen.locks_after_fresh = run_locks(client)
    for daemon in [killed, *survivors]:
        seen.tracebacks[daemon.name] = daemon.log_path.read_text(errors="replace").count("Traceback")
    return seen, survivors


@pytest.fixture
def calls_crawler(
    crawler_process: Callable[..., StubProcess], tmp_path: Path
) -> Iterator[tuple[StubProcess, Path]]:
    calls_log = tmp_path / "calls.jsonl"
    yield crawler_process("--calls-log", str(calls_log), "--delay-ms", "250"), calls_log


def test_rolling_upgrade_old_daemon_killed_new_daemons_take_over(
    r: redis.Redis,
    previous_scheduler: Path,
    calls_crawler: tuple[StubProcess, Path],
    daemons: Callable[..., Daemons],
) -> None:
    crawler, calls_log = calls_crawler
    group = daemons(crawler.address, **ENV)
    seen, survivors = mixed_run(
        r,
        group,
        calls_log,
        doomed=(previous_scheduler, "old-1"),
        survivor=(NEW_SCHEDULER, "new-1"),
        replacement=(NEW_SCHEDULER, "new-2"),
    )
    report = seen.report()
    print("\nrolling upgrade:\n" + report)
    assert seen.lost == [], report
    assert seen.pending_at_rest == 0, report
    assert seen.duplicates <= len(seen.killed_held), report
    assert seen.stuck == [], report
    assert seen.locks_after_fresh == {}, report
    assert set(seen.tracebacks.values()) == {0}, report
    assert all(daemon.stop() == 0 for daemon in survivors)


def test_rollback_new_daemon_killed_old_daemons_take_over(
    r: redis.Redis,
    previous_scheduler: Path,
    calls_crawler: tuple[StubProcess, Path],
    daemons: Callable[..., Daemons],
) -> None:
    crawler, calls_log = calls_crawler
    group = daemons(crawler.address, **ENV)
    seen, survivors = mixed_run(
        r,
        group,
        calls_log,
        doomed=(NEW_SCHEDULER, "new-1"),
        survivor=(previous_scheduler, "old-1"),
        replacement=(previous_scheduler, "old-2"),
    )
    report = seen.report()
    print("\nrollback:\n" + report)
    assert seen.lost == [], report
    assert seen.pending_at_rest == 0, report
    assert seen.duplicates <= len(seen.killed_held), report
    assert seen.stuck == [], report
    assert seen.locks_after_fresh == {}, report
    assert set(seen.tracebacks.values()) == {0}, report
    assert all(daemon.stop() == 0 for daemon in survivors)
