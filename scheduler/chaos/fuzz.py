"""The long fuzz mode: a real daemon fed random and mutated stream entries, mixed with valid executes.

``python -m scheduler.chaos.fuzz --minutes 1 --seed 7`` starts a private ``redis-server`` (or uses
``--redis-url``, on a stream of its own), the fake crawler (in this process, with a calls log) and one
daemon (``python -m scheduler run``, the program of ``goodshunter-scheduler run``, JSON logs to a file),
then for ``minutes`` writes, with XADD as a broken producer would, a seeded mix of poison (mutated valid
messages, wrong types, huge numbers, nesting, invalid UTF-8, missing ``data``, extra fields, oversized,
random bytes) and valid ``execute`` messages for freshly registered tasks. At the end it checks that the
daemon is still up with a flat resident memory, that every bad entry was dead-lettered exactly once, that
every valid execute was crawled exactly once, that nothing is pending, and that the daemon's log holds no
whole payload. ``run_fuzz`` returns the figures as a dict; ``main`` prints them as a table, exit 0 / 1.

This module starts, runs and stops it all; ``fuzz_entries`` makes the entries, ``fuzz_feed`` writes them
and reads the stream's side, ``fuzz_checks`` turns what was observed into figures and checks.

A mutated entry that still decodes as a valid message is not sent (it could be a ``stop``, or name a task
that does not exist): every entry sent is either a registered execute or poison, so the oracle is exact.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import redis

from crawler_stub import CrawlerStub
from scheduler.chaos.fuzz_checks import Observed, checks, crawled_tasks, figures, log_blob
from scheduler.chaos.fuzz_entries import MAX_ENTRY_BYTES
from scheduler.chaos.fuzz_feed import GROUP, Feeder
from scheduler.chaos.procinfo import rss_kib
from scheduler.devtools.redis_server import RedisServer
from scheduler.taskqueue import keys
from scheduler.tasks.registry import RedisTaskRegistry

CONSUMER: Final = "fuzz-daemon"
SETTLE_TIMEOUT_S: Final = 60.0

# Short timings, as the e2e tests run the daemon; every one of them is a real setting.
DAEMON_ENV: Final = {
    "APP_METRICS_PORT": "0",
    "APP_LOG_FORMAT": "json",
    "APP_LOG_LEVEL": "info",
    "APP_CRAWLER_DEADLINE": "5s",
    "APP_CRAWLER_BACKOFF_INITIAL": "20ms",
    "APP_CRAWLER_BACKOFF_MAX": "100ms",
    "APP_RETRY_BACKOFF_BASE": "200ms",
    "APP_RETRY_BACKOFF_MAX": "2s",
    "APP_LEASE_TIMEOUT": "5s",
    "APP_RECLAIM_INTERVAL": "1s",
    "APP_HEARTBEAT_INTERVAL": "1s",
    "APP_SHUTDOWN_GRACE": "10s",
    "APP_MAX_ENTRY_BYTES": str(MAX_ENTRY_BYTES),
}


def _wait(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _start_daemon(workdir: Path, redis_url: str, crawler_addr: str, stream: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "REDIS_"))}
    env.update(DAEMON_ENV)
    env.update(
        {"REDIS_URL": redis_url, "APP_CRAWLER_GRPC_ADDR": crawler_addr, "APP_TASK_QUEUE_STREAM": stream}
    )
    argv = [sys.executable, "-m", "scheduler", "run", "--consumer", CONSUMER, "--workers", "8"]
    with open(workdir / "daemon.log", "wb") as log:
        # cwd: the work directory, so no configs/config.json of the caller's is read
        return subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir, stdin=subprocess.DEVNULL
        )


def _forget(client: redis.Redis, stream: str, task_ids: list[int]) -> None:
    """On a Redis that is not ours: remove the run's stream, its derived keys and its task specs."""
    registry = RedisTaskRegistry(client)
    for task_id in task_ids:
        registry.delete(task_id)
    for key in list(client.scan_iter(match=f"{stream}*", count=1000)):
        client.delete(key)


def _stop(process: subprocess.Popen[bytes], timeout: float) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(10)


def run_fuzz(minutes: float, seed: int, redis_url: str | None = None) -> dict[str, Any]:
    """Fuzz a real daemon for ``minutes``; the result's ``ok`` is True when every check held."""
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="goodshunter-fuzz-"))
    stream = f"fuzz:{seed}:{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}:task:queue"
    calls_log = workdir / "crawler-calls.jsonl"
    result: dict[str, Any] = {"seed": seed, "minutes": minutes, "stream": stream, "workdir": str(workdir)}
    started = time.monotonic()
    own_server: RedisServer | None = None
    with contextlib.ExitStack() as stack:
        if redis_url is None:
            own_server = RedisServer(data_dir=str(workdir / "redis"))
            os.makedirs(own_server.data_dir, exist_ok=True)
            stack.enter_context(own_server)
            redis_url = own_server.url
        client = redis.Redis.from_url(redis_url, socket_timeout=10)
        stack.callback(client.close)
        crawler = CrawlerStub(port=0, calls_log=str(calls_log), delay_ms=5, items=2).start()
        stack.callback(crawler.stop, 0)
        daemon = _start_daemon(workdir, redis_url, crawler.address, stream)
        stack.callback(_stop, daemon, 15)
        heartbeat = keys.heartbeat_key(stream, GROUP, CONSUMER)
        if not _wait(lambda: bool(client.exists(heartbeat)) or daemon.poll() is not None, 30):
            raise RuntimeError(f"the daemon did not start; see {workdir}/daemon.log")
        if daemon.poll() is not None:
            raise RuntimeError(
                f"the daemon exited at start-up ({daemon.returncode}); see {workdir}/daemon.log"
            )

        feeder = Feeder(client, stream, rng, daemon)
        feeder.feed(minutes * 60)
        rss_end_sample = rss_kib(daemon.pid)

        def settled() -> bool:
            crawled = crawled_tasks(calls_log)
            done = (
                set(feeder.sent.good.values()) <= set(crawled)
                and set(feeder.sent.bad) <= set(feeder.dead_letters())
                and feeder.delivered_all()
                and feeder.pending() == 0
            )
            return done or daemon.poll() is not None

        _wait(settled, SETTLE_TIMEOUT_S, 0.25)
        time.sleep(0.5)  # late duplicates, if any, show up in the counts
        alive = daemon.poll() is None
        rss_end = rss_kib(daemon.pid) if alive else rss_end_sample
        letters = feeder.dead_letters()
        crawled = crawled_tasks(calls_log)
        pending = feeder.pending()
        exit_code = _stop(daemon, 15)
        blob = log_blob(workdir / "daemon.log")

        seen = Observed(crawled, letters, pending, alive, exit_code, feeder.rss, rss_end, blob)
        result.update(figures(feeder.sent, seen), seconds=round(time.monotonic() - started, 1))
        result["checks"] = checks(result)
        result["ok"] = all(result["checks"].values())
        if own_server is None:
            _forget(client, stream, sorted(set(feeder.sent.good.values())))
    if result["ok"]:
        shutil.rmtree(workdir, ignore_errors=True)
        result["workdir"] = None  # removed; kept (with its logs) when a check failed
    return result


def table(result: dict[str, Any]) -> str:
    def kib(value: object) -> str:
        return f"{value / 1024:.1f} MiB" if isinstance(value, int) else "?"

    rows = [
        ("seed / minutes", f"{result['seed']} / {result['minutes']:g} ({result['seconds']} s in all)"),
        ("entries sent", f"{result['sent_good']} valid executes, {result['sent_bad']} poison"),
        ("valid executes crawled", f"{result['crawled']} (missing {result['not_crawled']}, duplicates {result['duplicate_crawls']}, unexpected {result['unexpected_crawls']})"),
        ("poison dead-lettered", f"{result['dead_lettered']} (missing {result['missing_dead_letters']}, twice {result['dead_lettered_twice']}; valid ones {result['good_dead_lettered']})"),
        ("pending at the end", str(result["pending"])),
        ("daemon RSS", f"{kib(result['rss_start_kib'])} → {kib(result['rss_end_kib'])} (peak {kib(result['rss_peak_kib'])})"),
        ("daemon", f"{'up' if result['alive'] else 'DOWN'} at the end, exit {result['exit_code']} on SIGTERM"),
        ("log", f"{result['payloads_in_log']} payloads, {result['tracebacks']} tracebacks"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append("")
    lines += [f"{'ok  ' if held else 'FAIL'}  {name}" for name, held in result["checks"].items()]
    if result["workdir"]:
        lines.append(f"logs kept in {result['workdir']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scheduler.chaos.fuzz",
        description="Feed a real daemon random and mutated stream entries mixed with valid executes.",
    )
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to feed (default %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    parser.add_argument("--redis-url", default=None, help="an existing Redis (default: a private server)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    result = run_fuzz(args.minutes, seed, args.redis_url)
    print(table(result))
    print("PASS" if result["ok"] else "FAIL")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
