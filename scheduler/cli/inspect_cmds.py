"""``stats``, ``pending``, ``dlq list|replay|purge`` and ``check``: looking at the queue, and repairing it.

Each command shows what ``redis-cli`` would (XLEN, XINFO, XPENDING...) decoded with the package's own
readers, so nobody parses entry ids or JSON by hand; the reads are ``scheduler.inspect``'s, this module
parses arguments and renders their answers. The one write that matters, ``dlq replay``, is a Lua
script per dead letter: the new entry and the removal of the dead letter happen together or not at all.

(Just over 300 lines: the queries are in ``scheduler.inspect``; what is left is the rendering of four
subcommands and the two repairs of ``dlq``.)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

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
from scheduler.errors import InvalidMessageError
from scheduler.inspect.daemons import Heartbeat, heartbeat_of
from scheduler.inspect.deadletters import DeadLetter, dead_letters, every_dead_letter, named_dead_letters
from scheduler.inspect.pending import PendingEntry, pending_entries
from scheduler.inspect.queue import queue_stats
from scheduler.taskqueue import decode, keys
from scheduler.taskqueue._redis import text
from scheduler.taskqueue.scripts import Scripts

ENTRY_ID = re.compile(r"[0-9]+-[0-9]+")


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
        "intervals old; else exit 1 with one line saying why. For container health checks. With "
        "app.processes N (run --processes), every one of the N daemons NAME-0 … NAME-(N-1) is checked.",
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


def flat(entry: PendingEntry | DeadLetter) -> dict[str, Any]:
    """An entry as ``--json`` shows it: its payload's fields beside its own."""
    out = asdict(entry)
    out.update(out.pop("payload"))
    return out


# -- stats ------------------------------------------------------------------------------------------------


@connected
def stats(args: argparse.Namespace, settings: Settings, client: redis.Redis) -> int:
    found = queue_stats(client, settings.task_queue_stream, settings.task_queue_group)
    if args.json:
        print_json(
            {
                "redis": settings.redis_target(),
                **asdict(found),
                "daemons": [d.as_dict() for d in found.daemons],
            }
        )
        return EXIT_OK
    missing = "  (does not exist yet)"
    age, lag = found.oldest_pending_age_s, found.lag
    rows = [
        ("redis", settings.redis_target()),
        ("stream", found.stream + ("" if found.stream_exists else missing)),
        ("group", found.group + ("" if found.group_exists else missing)),
        ("entries (XLEN)", found.length),
        ("pending (delivered, not acked)", found.pending),
        ("lag (not yet delivered)", "unknown" if lag is None and found.group_exists else lag or 0),
        ("oldest pending", f"{found.oldest_pending_id} ({ago(age)} ago)" if age is not None else "-"),
        ("delayed retries", found.delayed_retries),
        ("dead letters", found.dead_letters),
        ("results", found.results),
        ("periodic tasks scheduled", found.scheduled_tasks),
    ]
    show_table(("", ""), [[label, str(value)] for label, value in rows], whole=("",))
    if found.consumers:
        show_table(
            ("consumer", "pending", "idle"),
            [[c.name, str(c.pending), ago(c.idle_s)] for c in found.consumers],
        )
    if not found.daemons:
        print("no live daemons (no fresh heartbeat)")
        return EXIT_OK
    show_table(
        ("daemon", "host", "pid", "heartbeat", "busy", "circuit"),
        [[d.consumer, str(d.get("host")), str(d.get("pid")), f"{ago(d.age_s)} ago",
          f"{d.get('busy')}/{d.get('workers')}", str(d.get("circuit"))] for d in found.daemons],
    )  # fmt: skip
    return EXIT_OK


# -- pending ----------------------------------------------------------------------------------------------


@connected
def pending(args: argparse.Namespace, settings: Settings, client: redis.Redis) -> int:
    stream, group = settings.task_queue_stream, settings.task_queue_group
    found = pending_entries(client, stream, group, args.count, settings.max_entry_bytes)
    total, out = found.total, [flat(e) for e in found.entries]
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
    found = dead_letters(client, settings.task_queue_stream, args.count, settings.max_entry_bytes)
    total = found.total
    out = [{**flat(e), "replayable": e.replayable} for e in found.entries]
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
    letters: Iterable[tuple[str, dict[bytes, bytes] | None]] = (
        every_dead_letter(client, stream) if args.all else named_dead_letters(client, stream, args.ids)
    )
    for entry, fields in letters:
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
    # `run --processes N` runs consumers <name>-0 … <name>-(N-1): each is checked (--consumer: that one)
    names = [settings.consumer_name] if args.consumer else settings.consumer_names()
    target = settings.redis_target()
    # A health check must answer fast when Redis is gone: short timeouts, no retry, no extra PING.
    client = settings.redis_client(
        socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0), health_check_interval=0
    )
    try:
        beats = [
            heartbeat_of(client, settings.task_queue_stream, settings.task_queue_group, n) for n in names
        ]
    except redis.AuthenticationError:
        raise CliError(f"Redis at {target} refused the password") from None
    except redis.RedisError as exc:
        raise CliError(f"Redis at {target} is unreachable ({type(exc).__name__})") from None
    finally:
        client.close()
    lines = [
        _fresh(name, beat, 3 * settings.heartbeat_interval) for name, beat in zip(names, beats, strict=True)
    ]
    print("\n".join(lines))
    return EXIT_OK


def _fresh(name: str, beat: Heartbeat | None, limit: float) -> str:
    if beat is None:
        raise CliError(f"no heartbeat from consumer {name!r}: its daemon is not running")
    if beat.age_s is None:
        raise CliError(f"heartbeat of consumer {name!r} is unreadable")
    age = beat.age_s
    if age > limit:
        raise CliError(f"heartbeat of consumer {name!r} is {age:.0f}s old (limit {limit:.0f}s)")
    busy, workers, circuit = beat.get("busy"), beat.get("workers"), beat.get("circuit")
    return f"ok: consumer {name} heartbeat {max(age, 0):.1f}s old, {busy}/{workers} busy, circuit {circuit}"
