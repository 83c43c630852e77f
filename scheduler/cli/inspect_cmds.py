"""``stats``, ``pending``, ``dlq list|replay|purge`` and ``check``: looking at the queue, and repairing it.

Each command shows what ``redis-cli`` would (XLEN, XINFO, XPENDING...) decoded with the package's own
readers, so nobody parses entry ids or JSON by hand. The one write that matters, ``dlq replay``, is a Lua
script per dead letter: the new entry and the removal of the dead letter happen together or not at all.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from scheduler.cli.common import (
    EXIT_FAIL,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Command,
    Subparsers,
    add_config_option,
    connected,
    print_json,
    settings_from,
)
from scheduler.config.kinds import compact_duration
from scheduler.config.settings import Settings
from scheduler.daemon.timers import read_heartbeat
from scheduler.errors import InvalidMessageError
from scheduler.taskqueue import decode, keys
from scheduler.taskqueue._redis import text
from scheduler.taskqueue.scripts import Scripts

Entry = tuple[str, dict[bytes, bytes]]
ENTRY_ID = re.compile(r"[0-9]+-[0-9]+")
BATCH = 100


def register(sub: Subparsers) -> None:
    def command(parser: argparse.ArgumentParser, handler: Command, *, listing: bool = False) -> None:
        add_config_option(parser)
        if listing:
            parser.add_argument("--json", action="store_true", help="machine-readable output")
            parser.add_argument("--count", type=positive, default=100, metavar="N", help="oldest N (100)")
        parser.set_defaults(handler=handler)

    p = sub.add_parser("stats", help="queue, consumers and live daemons at a glance")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    command(p, stats)
    command(
        sub.add_parser("pending", help="entries delivered and not yet acknowledged"), pending, listing=True
    )
    dlq = sub.add_parser("dlq", help="the dead-letter stream: list, replay, purge")
    dsub = dlq.add_subparsers(dest="dlq_command", metavar="DLQ_COMMAND", required=True)
    command(dsub.add_parser("list", help="dead letters, oldest first"), dlq_list, listing=True)
    p = dsub.add_parser(
        "replay",
        help="put dead letters back on the task stream (retry reset to 0)",
        description="Each dead letter is enqueued again with retry 0 and removed from the dead-letter stream "
        "in one atomic step. One that is not a valid task message is reported and left in place. Exit 3 if "
        "an ID does not exist (any more), 1 if one was not replayable.",
    )
    p.add_argument("ids", metavar="ID", nargs="*", type=entry_id, help="dead-letter entry ids")
    p.add_argument("--all", action="store_true", help="every dead letter present when the command starts")
    command(p, dlq_replay)
    p = dsub.add_parser("purge", help="delete every dead letter (needs --yes)")
    p.add_argument("--yes", action="store_true", help="really delete them")
    command(p, dlq_purge)
    p = sub.add_parser(
        "check",
        help="health check: Redis answers and this consumer's heartbeat is fresh",
        description="Exit 0 when Redis answers and the daemon's heartbeat is at most three heartbeat "
        "intervals old; else exit 1 with one line saying why. For container health checks.",
    )
    p.add_argument("--consumer", metavar="NAME", help="consumer name (default: app.consumer_name)")
    command(p, check)


def positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 1, got {value!r}")
    return int(value)


def entry_id(value: str) -> str:
    if not ENTRY_ID.fullmatch(value):
        raise argparse.ArgumentTypeError(f"not a stream entry id (like 1700000000000-0): {value!r}")
    return value


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 60 else compact_duration(round(seconds))


def show_table(columns: Sequence[str], rows: list[list[str]], *, whole: Sequence[str] = ()) -> None:
    """The ``whole`` columns never wrap or shorten: ids are copied from here into ``dlq replay``."""
    from rich.console import Console  # rich loads only for the commands that draw tables
    from rich.table import Table

    table = Table(*columns, show_header=any(columns))
    for column in table.columns:
        column.no_wrap = column.header in whole
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def xrange(client: redis.Redis, key: str, start: str, end: str, count: int | None = None) -> list[Entry]:
    return [
        (text(i), f)
        for i, f in cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(key, start, end, count))
    ]


def describe_payload(raw: bytes | None, settings: Settings, missing: str) -> dict[str, Any]:
    """task_id, action and retry of a payload; ``problem`` says why they are None (never the payload)."""
    if raw is None:
        return {"task_id": None, "action": None, "retry": None, "problem": missing}
    try:
        msg = decode(raw, settings.max_entry_bytes)
    except InvalidMessageError as exc:
        return {"task_id": None, "action": None, "retry": None, "problem": f"invalid: {exc.reason}"}
    return {"task_id": msg.task_id, "action": msg.action, "retry": msg.retry, "problem": None}


# -- stats ------------------------------------------------------------------------------------------------


@connected
def stats(args: argparse.Namespace, settings: Settings, client: redis.Redis) -> int:
    found = collect_stats(settings, client)
    if args.json:
        print_json(found)
        return EXIT_OK
    missing = "  (does not exist yet)"
    age, lag = found["oldest_pending_age_s"], found["lag"]
    rows = [
        ("redis", found["redis"]),
        ("stream", found["stream"] + ("" if found["stream_exists"] else missing)),
        ("group", found["group"] + ("" if found["group_exists"] else missing)),
        ("entries (XLEN)", found["length"]),
        ("pending (delivered, not acked)", found["pending"]),
        ("lag (not yet delivered)", "unknown" if lag is None and found["group_exists"] else lag or 0),
        ("oldest pending", f"{found['oldest_pending_id']} ({ago(age)} ago)" if age is not None else "-"),
        ("delayed retries", found["delayed_retries"]),
        ("dead letters", found["dead_letters"]),
        ("results", found["results"]),
        ("periodic tasks scheduled", found["scheduled_tasks"]),
    ]
    show_table(("", ""), [[label, str(value)] for label, value in rows], whole=("",))
    if found["consumers"]:
        rows_c = [[c["name"], str(c["pending"]), ago(c["idle_s"])] for c in found["consumers"]]
        show_table(("consumer", "pending", "idle"), rows_c)
    if not found["daemons"]:
        print("no live daemons (no fresh heartbeat)")
        return EXIT_OK
    show_table(
        ("daemon", "host", "pid", "heartbeat", "busy", "circuit"),
        [[d["consumer"], str(d.get("host")), str(d.get("pid")), f"{ago(d['age_s'])} ago",
          f"{d.get('busy')}/{d.get('workers')}", str(d.get("circuit"))] for d in found["daemons"]],
    )  # fmt: skip
    return EXIT_OK


def collect_stats(settings: Settings, client: redis.Redis) -> dict[str, Any]:
    stream, group = settings.task_queue_stream, settings.task_queue_group
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.exists(stream)
    pipe.xlen(stream)
    pipe.zcard(keys.delayed_set(stream))
    pipe.zcard(keys.schedule_set(stream))
    pipe.xlen(keys.dlq_stream(stream))
    pipe.xlen(keys.results_stream(stream))
    (secs, micros), exists, length, delayed, scheduled, dead, results = pipe.execute()
    now_ms = secs * 1000 + micros // 1000  # entry ids carry Redis' clock, so pending ages use it too
    found: dict[str, Any] = {
        "redis": settings.redis_target(), "stream": stream, "group": group,
        "stream_exists": bool(exists), "group_exists": False, "length": length, "pending": 0, "lag": None,
        "last_delivered_id": None, "oldest_pending_id": None, "oldest_pending_age_s": None,
        "delayed_retries": delayed, "dead_letters": dead, "results": results, "scheduled_tasks": scheduled,
        "consumers": [], "daemons": live_daemons(client, stream, group),
    }  # fmt: skip
    try:
        groups = client.xinfo_groups(stream) if exists else []
        info = next((g for g in groups if text(g["name"]) == group), None)
        if info is None:
            return found
        summary = client.xpending(stream, group)
        consumers = client.xinfo_consumers(stream, group)
    except redis.ResponseError as exc:  # the stream or group vanished between two commands
        if "no such key" in str(exc) or "NOGROUP" in str(exc):
            return found
        raise
    oldest = text(summary["min"]) if summary["min"] else None
    lag = info.get("lag")
    if lag is None:  # Redis 6.2 has no lag; 7.x says nil after some deletions: count what is left
        lag = len(
            client.xrange(stream, f"({text(info['last-delivered-id'])}", "+", count=LAG_COUNT_CAP) or []
        )
    found.update(
        group_exists=True, pending=int(summary["pending"]), lag=lag,
        last_delivered_id=text(info["last-delivered-id"]), oldest_pending_id=oldest,
        oldest_pending_age_s=max(0, now_ms - int(oldest.split("-")[0])) / 1000 if oldest else None,
        consumers=[{"name": text(c["name"]), "pending": int(c["pending"]), "idle_s": int(c["idle"]) / 1000}
                   for c in consumers],
    )  # fmt: skip
    return found


LAG_COUNT_CAP = 100_000  # counting past this is slow and tells an operator nothing more


def live_daemons(client: redis.Redis, stream: str, group: str) -> list[dict[str, Any]]:
    """Daemons by their heartbeat keys (each expires three intervals after its daemon stops)."""
    prefix = keys.heartbeat_key(stream, group, "")
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"  # a glob character in a name is literal
    names = sorted(cast(list[bytes], list(client.scan_iter(match=pattern, count=1000))))
    daemons = []
    for name, raw in zip(names, client.mget(names) if names else [], strict=True):
        beat = read_heartbeat(raw)
        if beat is not None:
            ts = beat.get("ts")
            age = time.time() - ts if isinstance(ts, int | float) else None
            daemons.append({**beat, "consumer": text(name).removeprefix(prefix), "age_s": age})
    return daemons


# -- pending ----------------------------------------------------------------------------------------------


@connected
def pending(args: argparse.Namespace, settings: Settings, client: redis.Redis) -> int:
    stream, group = settings.task_queue_stream, settings.task_queue_group
    try:
        total = int(client.xpending(stream, group)["pending"])
        rows = cast(
            list[dict[str, Any]], client.xpending_range(stream, group, "-", "+", args.count) if total else []
        )
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        total, rows = 0, []
    pipe = client.pipeline(transaction=False)
    for row in rows:
        pipe.xrange(stream, row["message_id"], row["message_id"])
    out = []
    for row, found in zip(rows, pipe.execute() if rows else [], strict=True):
        data = found[0][1].get(b"data") if found else None
        out.append(
            {"id": text(row["message_id"]), "consumer": text(row["consumer"]),
             "idle_s": row["time_since_delivered"] / 1000, "deliveries": row["times_delivered"],
             **describe_payload(data, settings, "trimmed")}
        )  # fmt: skip
    if args.json:
        print_json({"total": total, "entries": out})
    elif not out:
        print(f"no pending entries in {stream} for group {group}")
    else:
        show_table(
            ("entry id", "consumer", "idle", "deliveries", "task", "action"),
            [[e["id"], e["consumer"], ago(e["idle_s"]), str(e["deliveries"]), str(e["task_id"] or "-"),
              e["action"] or f"({e['problem']})"] for e in out],
            whole=("entry id",),
        )  # fmt: skip
        print(f"{total} pending" + (f", oldest {len(out)} shown" if total > len(out) else ""))
    return EXIT_OK


# -- dlq --------------------------------------------------------------------------------------------------


@connected
def dlq_list(args: argparse.Namespace, settings: Settings, client: redis.Redis) -> int:
    dlq = keys.dlq_stream(settings.task_queue_stream)
    total = int(client.xlen(dlq))
    out = []
    for entry, fields in xrange(client, dlq, "-", "+", args.count):
        described = describe_payload(fields.get(b"payload"), settings, "no payload")
        field = {name: fields.get(name.encode(), b"").decode("utf-8", "replace")
                 for name in ("original_id", "reason", "failed_at")}  # fmt: skip
        out.append({"id": entry, **field, **described, "replayable": described["problem"] is None})
    if args.json:
        print_json({"total": total, "entries": out})
    elif not out:
        print(f"no dead letters in {dlq}")
    else:
        show_table(
            ("id", "original id", "task", "reason", "failed at"),
            [[e["id"], e["original_id"], str(e["task_id"]) if e["replayable"] else f"({e['problem']})",
              e["reason"][:120], e["failed_at"]] for e in out],
            whole=("id",),
        )  # fmt: skip
        print(f"{total} dead letters" + (f", oldest {len(out)} shown" if total > len(out) else ""))
    return EXIT_OK


def dlq_replay(args: argparse.Namespace) -> int:
    if bool(args.ids) == args.all:
        raise CliError("give dead-letter IDs or --all (not both)", EXIT_USAGE)
    return connected(_replay)(args)


def _replay(args: argparse.Namespace, settings: Settings, client: redis.Redis) -> int:
    stream = settings.task_queue_stream
    dlq = keys.dlq_stream(stream)
    scripts = Scripts(client)
    replayed, missing, poison = 0, 0, 0
    for entry, fields in all_dead_letters(client, dlq) if args.all else named(client, dlq, args.ids):
        try:
            msg = decode(fields.get(b"payload"), settings.max_entry_bytes) if fields is not None else None
        except InvalidMessageError as exc:
            poison += 1
            print(f"{entry}: not replayable ({exc.reason}); left in place", file=sys.stderr)
            continue
        # The original timestamp stays: a request that a later successful crawl has already satisfied is not
        # crawled again, and an old user_create does not restart a task stopped since.
        new_id = None
        if msg is not None:
            new_id = scripts.run("dlq_replay", [dlq, stream], [entry, msg.with_retry(0).encode()])
        if msg is None or new_id is None:  # never there, or replayed / purged by someone else meanwhile
            missing += 1
            print(f"{entry}: no such dead letter (already replayed or purged?)", file=sys.stderr)
            continue
        replayed += 1
        print(f"{entry}\t{text(new_id)}\ttask {msg.task_id} {msg.action}")
    print(f"replayed {replayed} dead letter{'s' * (replayed != 1)} onto {stream}")
    return EXIT_NOT_FOUND if missing else EXIT_FAIL if poison else EXIT_OK


def named(client: redis.Redis, dlq: str, ids: list[str]) -> Iterator[tuple[str, dict[bytes, bytes] | None]]:
    for entry in dict.fromkeys(ids):  # the same id twice is one replay, not a "not found"
        found = xrange(client, dlq, entry, entry)
        yield entry, (found[0][1] if found else None)


def all_dead_letters(client: redis.Redis, dlq: str) -> Iterator[Entry]:
    """Every dead letter present now. The bound matters: a replayed task that fails again at once lands
    back in the dead-letter stream, and must not be replayed again by the same command."""
    last = cast(list[tuple[bytes, Any]], client.xrevrange(dlq, "+", "-", count=1))
    if not last:
        return
    start, end = "-", text(last[0][0])
    while batch := xrange(client, dlq, start, end, BATCH):
        yield from batch
        start = "(" + batch[-1][0]  # exclusive: unreplayable entries stay behind and are not read twice


@connected
def dlq_purge(args: argparse.Namespace, settings: Settings, client: redis.Redis) -> int:
    dlq = keys.dlq_stream(settings.task_queue_stream)
    if not args.yes:
        count = int(client.xlen(dlq))
        raise CliError(f"this deletes all {count} dead letters in {dlq}: add --yes", EXIT_USAGE)
    pipe = client.pipeline(transaction=True)  # the count printed is exactly what was deleted
    pipe.xlen(dlq)
    pipe.delete(dlq)
    count, _ = pipe.execute()
    print(f"deleted {count} dead letter{'s' * (count != 1)} from {dlq}")
    return EXIT_OK


# -- check ------------------------------------------------------------------------------------------------


def check(args: argparse.Namespace) -> int:
    settings = settings_from(args, consumer_name=args.consumer)
    name, target = settings.consumer_name, settings.redis_target()
    # A health check must answer fast when Redis is gone: short timeouts, no retry, no extra PING.
    client = settings.redis_client(
        socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0), health_check_interval=0
    )
    try:
        raw = client.get(keys.heartbeat_key(settings.task_queue_stream, settings.task_queue_group, name))
    except redis.AuthenticationError:
        raise CliError(f"Redis at {target} refused the password") from None
    except redis.RedisError as exc:
        raise CliError(f"Redis at {target} is unreachable ({type(exc).__name__})") from None
    finally:
        client.close()
    if raw is None:
        raise CliError(f"no heartbeat from consumer {name!r}: its daemon is not running")
    beat = read_heartbeat(raw) or {}
    ts = beat.get("ts")
    if not isinstance(ts, int | float):
        raise CliError(f"heartbeat of consumer {name!r} is unreadable")
    age, limit = time.time() - ts, 3 * settings.heartbeat_interval
    if age > limit:
        raise CliError(f"heartbeat of consumer {name!r} is {age:.0f}s old (limit {limit:.0f}s)")
    busy, workers, circuit = beat.get("busy"), beat.get("workers"), beat.get("circuit")
    print(f"ok: consumer {name} heartbeat {max(age, 0):.1f}s old, {busy}/{workers} busy, circuit {circuit}")
    return EXIT_OK
