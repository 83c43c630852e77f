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

A mutated entry that still decodes as a valid message is not sent (it could be a ``stop``, or name a task
that does not exist): every entry sent is either a registered execute or poison, so the oracle is exact.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import redis

from crawler_stub import CrawlerStub
from scheduler.chaos.procinfo import rss_kib
from scheduler.devtools.redis_server import RedisServer
from scheduler.errors import InvalidMessageError
from scheduler.taskqueue import TaskMessage, decode, keys
from scheduler.tasks.registry import RedisTaskRegistry, TaskSpec

GROUP: Final = keys.DEFAULT_GROUP
CONSUMER: Final = "fuzz-daemon"
MAX_ENTRY_BYTES: Final = 8192  # the daemon's app.max_entry_bytes: oversized entries stay cheap to write
SHOWN_MAX: Final = 200  # the daemon's log may hold no more than this much of a payload's start
BATCH_INTERVAL_S: Final = 0.05
GOOD_SHARE: Final = 0.3
RSS_SAMPLE_S: Final = 2.0
RSS_WARMUP_S: Final = 5.0  # the first sample is taken after this (imports, pools and caches filled)
RSS_SLACK_KIB: Final = 16 * 1024
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

Fields = dict[bytes, bytes]


# -- random entries -------------------------------------------------------------------------------------

_BIG: Final = [2**63, 2**63 - 1, 2**64, -(2**63), 10**30, -1, 0, 1_000_001, 10**400]
_NUMBER_TEXTS: Final = [b"1e400", b"-1e400", b"NaN", b"Infinity", b"-0", b"1.0", b"7" * 25, b"9" * 5000]
_BAD_UTF8: Final = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82", b"\x80"]


def random_json(rng: random.Random, depth: int = 0) -> object:
    """A random JSON value: scalars of every type, huge numbers, lists and objects a few levels deep."""
    kind = rng.randrange(9 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(_BIG)
    if kind == 3:
        return rng.randint(-(2**70), 2**70)
    if kind == 4:
        return rng.choice([rng.uniform(-1e300, 1e300), float("inf"), 1e-300, 0.5])
    if kind in (5, 6):
        return "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x2FFF)]))
            for _ in range(rng.randrange(12))
        )
    if kind == 7:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{rng.randrange(100)}": random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def _dumps(value: object, rng: random.Random) -> bytes:
    return json.dumps(value, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def _byte_mutation(rng: random.Random, base: bytes) -> bytes:
    data = bytearray(base)
    kind = rng.randrange(3)
    if kind == 0:  # flip bytes
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    at = rng.randrange(len(data))
    if kind == 1:  # insert random bytes
        return bytes(data[:at]) + rng.randbytes(rng.randint(1, 16)) + bytes(data[at:])
    return bytes(data[:at]) + bytes(data[rng.randint(at + 1, len(data)) :])  # delete a slice or truncate


def mutate(rng: random.Random, base: bytes) -> bytes:
    """A valid message's bytes changed the way a broken producer, a bug or a bit flip would."""
    kind = rng.randrange(10)
    if kind == 0:
        return _byte_mutation(rng, base)
    obj: dict[str, Any] = json.loads(base)
    key: str = rng.choice([*obj, "extra"])
    if kind == 1:  # a wrong-typed, huge, nested value
        obj[key] = random_json(rng)
        return _dumps(obj, rng)
    if kind == 2:  # a key missing
        obj.pop(key, None)
        return _dumps(obj, rng)
    if kind == 3:  # a number literal json reads but the decoder must refuse
        name = rng.choice(["task_id", "retry"])
        return base.replace(
            f'"{name}":{obj[name]}'.encode(), f'"{name}":'.encode() + rng.choice(_NUMBER_TEXTS)
        )
    if kind == 4:  # invalid UTF-8 inside a string
        at = base.index(b'"source":"') + len(b'"source":"')
        return base[:at] + rng.choice(_BAD_UTF8) + base[at:]
    if kind == 5:  # a lone surrogate through a JSON escape
        obj[rng.choice(["source", "action", "timestamp"])] = "\ud800x"
        return json.dumps(obj).encode()
    if kind == 6:  # deep nesting, around the object or as a value
        depth = rng.choice([rng.randint(2, 64), rng.randint(64, 4000)])
        if rng.random() < 0.5:
            return b"[" * depth + base + b"]" * depth
        return base[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 7:  # a duplicate key (json keeps the last)
        return base[:-1] + b',"' + key.encode() + b'":' + _dumps(random_json(rng), rng) + b"}"
    if kind == 8:  # oversized, or just under the limit with a broken tail
        size = rng.randint(MAX_ENTRY_BYTES - 32, 3 * MAX_ENTRY_BYTES)
        return base[:-1] + b',"pad":"' + b"p" * max(0, size - len(base)) + b'"'
    obj["action"] = rng.choice(["launch", "EXECUTE", "", "stop ", None, 1, ["execute"]])
    return _dumps(obj, rng)


def bad_entry(rng: random.Random, base: bytes) -> Fields:
    """The fields of one poison XADD (may, rarely, still decode: the caller checks)."""
    kind = rng.randrange(10)
    if kind < 6:
        data = mutate(rng, base)
    elif kind == 6:
        data = rng.randbytes(rng.randrange(1, 400))
    elif kind == 7:
        data = _dumps(random_json(rng), rng)
    elif kind == 8:  # no data field
        names = [b"Data", b"data ", b"payload", b"", b"d\xffata", b"DATA"]
        return {rng.choice(names): rng.randbytes(rng.randrange(60)) for _ in range(rng.randint(1, 3))}
    else:
        data = base[:-1] + b',"x":"' + b"y" * rng.randint(MAX_ENTRY_BYTES, 8 * MAX_ENTRY_BYTES) + b'"}'
    fields = {b"data": data}
    if rng.random() < 0.2:
        fields[rng.choice([b"x", b"trace", b"dat"])] = rng.randbytes(rng.randrange(20))
    return fields


def good_entry(rng: random.Random, task_id: int) -> Fields:
    """A valid execute for ``task_id``, sometimes with keys and stream fields that readers ignore."""
    source = rng.choice(["user_create", "periodic", "", "unknown", "fuzz-é"])
    data = TaskMessage.new(task_id, "execute", source).encode().encode()
    if rng.random() < 0.2:
        extended = data[:-1] + b',"extra":' + _dumps(random_json(rng), rng) + b"}"
        if not _is_poison({b"data": extended}):  # the extra value may be Infinity, 10**400…
            data = extended
    fields = {b"data": data}
    if rng.random() < 0.1:
        fields[b"trace"] = b"fuzz"
    return fields


def _is_poison(fields: Fields) -> bool:
    try:
        decode(fields.get(b"data"), MAX_ENTRY_BYTES)
    except InvalidMessageError:
        return True
    return False


# -- the run --------------------------------------------------------------------------------------------


@dataclass
class Sent:
    good: dict[str, int] = field(default_factory=dict)  # entry id -> task id
    bad: dict[str, bytes] = field(default_factory=dict)  # entry id -> data (b"" when it had none)
    skipped_valid: int = 0  # mutations that still decoded, not sent


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


class _Fuzz:
    def __init__(
        self, client: redis.Redis, stream: str, rng: random.Random, daemon: subprocess.Popen[bytes]
    ) -> None:
        self.client = client
        self.stream = stream
        self.rng = rng
        self.daemon = daemon
        self.registry = RedisTaskRegistry(client)
        self.sent = Sent()
        self.next_task = rng.randrange(10**12, 10**15)  # far from any real task id on a shared Redis
        self.rss: list[int] = []

    def batch(self) -> None:
        rng = self.rng
        n = rng.randint(1, 10)
        goods = [self.next_task + i for i in range(n) if rng.random() < GOOD_SHARE]
        self.next_task += n
        if goods:
            self.registry.put_many(TaskSpec(t, f"fuzz item {t}") for t in goods)
        base = TaskMessage.new(rng.randrange(1, 10**6), "execute", "user_create").encode().encode()
        entries: list[tuple[Fields, int | None]] = [(good_entry(rng, t), t) for t in goods]
        while len(entries) < n:
            fields = bad_entry(rng, base)
            if _is_poison(fields):
                entries.append((fields, None))
            else:
                self.sent.skipped_valid += 1
        rng.shuffle(entries)
        pipe = self.client.pipeline(transaction=False)
        for fields, _ in entries:
            pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
        for entry_id, (fields, task_id) in zip(pipe.execute(), entries, strict=True):
            if task_id is None:
                self.sent.bad[entry_id.decode()] = fields.get(b"data", b"")
            else:
                self.sent.good[entry_id.decode()] = task_id

    def feed(self, seconds: float) -> None:
        start = time.monotonic()
        next_sample = start + RSS_WARMUP_S
        while (now := time.monotonic()) - start < seconds and self.daemon.poll() is None:
            self.batch()
            if now >= next_sample:
                if (rss := rss_kib(self.daemon.pid)) is not None:
                    self.rss.append(rss)
                next_sample = now + RSS_SAMPLE_S
            time.sleep(BATCH_INTERVAL_S)

    def dead_letters(self) -> Counter[str]:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self.client.xrange(keys.dlq_stream(self.stream))  # type: ignore[assignment]
        return Counter(fields[b"original_id"].decode() for _, fields in entries)

    def pending(self) -> int:
        try:
            return int(self.client.xpending(self.stream, GROUP)["pending"])
        except redis.ResponseError:
            return 0

    def delivered_all(self) -> bool:
        last = self.client.xrevrange(self.stream, count=1)
        groups = [g for g in self.client.xinfo_groups(self.stream) if g["name"] in (GROUP, GROUP.encode())]
        if not last or not groups:
            return not last
        return bool(groups[0]["last-delivered-id"] == last[0][0])


def _calls(path: Path) -> Counter[int]:
    if not path.exists():
        return Counter()
    calls: Counter[int] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError, KeyError):
            call = json.loads(line)
            if call["code"] == "OK":
                calls[int(call["task_id"])] += 1
    return calls


def _log_blob(path: Path) -> str:
    return _log_blob_text(path.read_text(encoding="utf-8", errors="replace"))


def _log_blob_text(raw: str) -> str:
    """The daemon's log as written, and with each JSON line's strings unescaped."""
    decoded: list[str] = []

    def strings(value: Any) -> None:
        if isinstance(value, str):
            decoded.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                strings(item)
        elif isinstance(value, list):
            for item in value:
                strings(item)

    for line in raw.splitlines():
        with contextlib.suppress(ValueError):
            strings(json.loads(line))
    return raw + "\n" + "\n".join(decoded)


def _payloads_in_log(blob: str, payloads: Sequence[bytes]) -> int:
    found = 0
    for data in payloads:
        if len(data) <= SHOWN_MAX:
            continue
        text = data.decode("utf-8", "replace")
        forms = {text, repr(data)[2:-1], json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
        if any(form[: SHOWN_MAX + 1] in blob for form in forms):
            found += 1
    return found


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

        fuzz = _Fuzz(client, stream, rng, daemon)
        fuzz.feed(minutes * 60)
        rss_end_sample = rss_kib(daemon.pid)

        def settled() -> bool:
            crawled = _calls(calls_log)
            done = (
                set(fuzz.sent.good.values()) <= set(crawled)
                and set(fuzz.sent.bad) <= set(fuzz.dead_letters())
                and fuzz.delivered_all()
                and fuzz.pending() == 0
            )
            return done or daemon.poll() is not None

        _wait(settled, SETTLE_TIMEOUT_S, 0.25)
        time.sleep(0.5)  # late duplicates, if any, show up in the counts
        alive = daemon.poll() is None
        rss_end = rss_kib(daemon.pid) if alive else rss_end_sample
        letters = fuzz.dead_letters()
        crawled = _calls(calls_log)
        pending = fuzz.pending()
        exit_code = _stop(daemon, 15)
        blob = _log_blob(workdir / "daemon.log")

        good_tasks = Counter(fuzz.sent.good.values())
        rss_start = fuzz.rss[0] if fuzz.rss else None
        rss_peak = max([*fuzz.rss, rss_end or 0]) if fuzz.rss else rss_end
        bad = fuzz.sent.bad
        result.update(
            sent_good=len(fuzz.sent.good),
            sent_bad=len(bad),
            skipped_valid_mutations=fuzz.sent.skipped_valid,
            crawled=sum(1 for t in good_tasks if crawled[t] >= 1),
            not_crawled=sum(1 for t in good_tasks if crawled[t] == 0),
            duplicate_crawls=sum(max(0, crawled[t] - 1) for t in good_tasks),
            unexpected_crawls=sum(n for t, n in crawled.items() if t not in good_tasks),
            dead_lettered=sum(1 for i in bad if letters[i] >= 1),
            missing_dead_letters=sum(1 for i in bad if letters[i] == 0),
            dead_lettered_twice=sum(1 for i in bad if letters[i] > 1),
            good_dead_lettered=sum(1 for i in fuzz.sent.good if letters[i]),
            pending=pending,
            alive=alive,
            exit_code=exit_code,
            rss_start_kib=rss_start,
            rss_end_kib=rss_end,
            rss_peak_kib=rss_peak,
            payloads_in_log=_payloads_in_log(blob, list(bad.values())),
            tracebacks=blob.count("Traceback (most recent call last)"),
            seconds=round(time.monotonic() - started, 1),
        )
        rss_flat = (
            rss_start is not None and rss_end is not None and rss_end <= rss_start * 1.25 + RSS_SLACK_KIB
        )
        checks = {
            "daemon still up": alive,
            "clean exit on SIGTERM": exit_code == 0,
            "RSS flat": rss_flat,
            "every bad entry dead-lettered once": result["missing_dead_letters"] == 0
            and result["dead_lettered_twice"] == 0,
            "no good entry dead-lettered": result["good_dead_lettered"] == 0,
            "every valid execute crawled once": result["not_crawled"] == 0
            and result["duplicate_crawls"] == 0,
            "no unexpected crawl": result["unexpected_crawls"] == 0,
            "nothing pending": pending == 0,
            "no payload in the log": result["payloads_in_log"] == 0,
            "no traceback in the log": result["tracebacks"] == 0,
        }
        result["checks"] = checks
        result["ok"] = all(checks.values())
        if own_server is None:
            _forget(client, stream, list(good_tasks))
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
