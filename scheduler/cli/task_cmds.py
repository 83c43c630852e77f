"""``submit``, ``stop`` and ``task add|import|show|list``: putting work in, and the task registry.

(Over 300 lines: the seven subcommands that put work in share their argument and output helpers; split, they
would import each other.)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from typing import IO, Any

import redis

from scheduler.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Subparsers,
    add_config_option,
    connected,
    guard,
    print_json,
    redis_from,
    settings_from,
    task_id_arg,
)
from scheduler.config.durations import format_duration, parse_duration
from scheduler.config.settings import Settings
from scheduler.errors import InvalidTaskError
from scheduler.inspect.tasks import task_states
from scheduler.taskqueue import Producer
from scheduler.taskqueue.message import format_timestamp
from scheduler.tasks.lifecycle import Lifecycle
from scheduler.tasks.registry import RedisTaskRegistry, TaskSpec

SPEC_FIELDS = {
    "id", "keyword", "platform", "min_price", "max_price", "exclude_keywords", "only_on_sale", "limit",
    "sort", "order", "every", "status",
}  # fmt: skip


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "submit", help="enqueue execute messages", description="Enqueue one execute per task id."
    )
    add_config_option(p)
    p.add_argument("task_ids", metavar="TASK_ID", nargs="+", type=task_id_arg)
    p.add_argument("--source", default="user_create", help="message source (default: user_create)")
    p.set_defaults(handler=submit)

    p = sub.add_parser(
        "stop",
        help="stop tasks everywhere",
        description="Mark the tasks stopped, take them off the schedule and enqueue a stop message, which "
        "every daemon honours: queued runs are skipped and a crawl in flight is cancelled.",
    )
    add_config_option(p)
    p.add_argument("task_ids", metavar="TASK_ID", nargs="+", type=task_id_arg)
    p.set_defaults(handler=stop)

    task = sub.add_parser("task", help="manage the task registry (add, import, show, list, delete)")
    tsub = task.add_subparsers(dest="task_command", metavar="TASK_COMMAND", required=True)
    p = tsub.add_parser(
        "add",
        help="register (or replace) a task and start it",
        description="Register a search. Unless --no-run, it runs at once (source user_create), then every "
        "--every (default app.schedule_interval).",
    )
    add_config_option(p)
    p.add_argument("--id", dest="task_id", required=True, type=task_id_arg)
    p.add_argument("--keyword", required=True)
    p.add_argument("--platform", choices=["mercari", "yahoo_auction"], default="mercari")
    p.add_argument("--min-price", type=int, default=0)
    p.add_argument("--max-price", type=int, default=0)
    p.add_argument(
        "--exclude", action="append", default=[], metavar="WORD", help="exclude keyword (repeatable)"
    )
    p.add_argument("--limit", type=int, default=0, help="items per crawl (0: the crawler's default)")
    p.add_argument("--sort", choices=["created_time", "price", "score", "num_likes"], default="created_time")
    p.add_argument("--order", choices=["desc", "asc"], default="desc")
    p.add_argument("--include-sold", action="store_true", help="also items no longer on sale")
    p.add_argument("--every", metavar="DURATION", help="Go duration such as 5m, 90s, 1h30m")
    p.add_argument("--no-run", action="store_true", help="register stopped: no run now, no periodic runs")
    p.set_defaults(handler=task_add)

    p = tsub.add_parser(
        "import",
        help="register many tasks from JSON lines",
        description="One JSON object per line with the fields of `task add` (id, keyword, platform, min_price, "
        "max_price, exclude_keywords, only_on_sale, limit, sort, order, every, status). Every line is checked "
        "before anything is written; a bad line stops the import with its line number.",
    )
    add_config_option(p)
    p.add_argument("file", metavar="FILE", help="path, or - for standard input")
    p.add_argument("--no-run", action="store_true", help="register without running now")
    p.set_defaults(handler=task_import)

    p = tsub.add_parser("show", help="one task: spec, last crawl status, next run")
    add_config_option(p)
    p.add_argument("task_id", metavar="ID", type=task_id_arg)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=task_show)

    p = tsub.add_parser(
        "delete",
        help="stop tasks and remove them from the registry",
        description="Stop the tasks everywhere, then delete their specs. Messages still queued for them are "
        "acknowledged without a crawl and counted as skipped.",
    )
    add_config_option(p)
    p.add_argument("task_ids", metavar="ID", nargs="+", type=task_id_arg)
    p.set_defaults(handler=task_delete)

    p = tsub.add_parser("list", help="every registered task")
    add_config_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=task_list)


@connected
def submit(args: argparse.Namespace, settings: Settings, client: redis.Redis) -> int:
    known = RedisTaskRegistry(client).registered(args.task_ids)
    unknown = [t for t, registered in zip(args.task_ids, known, strict=True) if not registered]
    ids = Producer(client, stream=settings.task_queue_stream).submit_many(args.task_ids, args.source)
    for task_id, entry_id in zip(args.task_ids, ids, strict=True):
        print(f"{task_id}\t{entry_id}")
    if unknown:
        shown = ", ".join(map(str, unknown))
        print(f"warning: not registered, the daemon will skip them: {shown}", file=sys.stderr)
    return EXIT_OK


@connected
def stop(args: argparse.Namespace, settings: Settings, client: redis.Redis) -> int:
    lifecycle = Lifecycle(settings, client)
    producer = Producer(client, stream=settings.task_queue_stream)
    for task_id in args.task_ids:
        known = lifecycle.stop(task_id, who="cli") != "unknown"
        entry_id = producer.stop_task(task_id)
        print(f"{task_id}\t{entry_id}" + ("" if known else "\t(not registered)"))
    return EXIT_OK


def _spec_from_args(args: argparse.Namespace) -> TaskSpec:
    try:
        interval = parse_duration(args.every) if args.every else None
    except ValueError as exc:
        raise CliError(f"--every: {exc}", EXIT_USAGE) from None
    try:
        return TaskSpec(
            task_id=args.task_id,
            keyword=args.keyword,
            platform=args.platform,
            min_price=args.min_price,
            max_price=args.max_price,
            exclude_keywords=tuple(args.exclude),
            only_on_sale=not args.include_sold,
            limit=args.limit,
            sort=args.sort,
            order=args.order,
            status="stopped" if args.no_run else "running",
            interval_s=interval,
        )
    except InvalidTaskError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def task_add(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    settings = settings_from(args)
    client = redis_from(settings)
    return guard(lambda: _register(settings, client, [spec], quiet=False))


def _register(settings: Settings, client: redis.Redis, specs: list[TaskSpec], *, quiet: bool) -> int:
    lifecycle = Lifecycle(settings, client)
    started = lifecycle.register(specs)
    if not quiet:
        for spec in specs:
            every = format_duration(spec.interval_s or settings.schedule_interval)
            state = f"running every {every}" if spec.status == "running" else "registered, stopped"
            print(
                f"task {spec.task_id}: {state}"
                + (f" (entry {started[spec.task_id]})" if spec.task_id in started else "")
            )
    return EXIT_OK


def task_import(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.file == "-":
        specs = list(_parse_lines(sys.stdin, args.no_run))
    else:
        try:
            with open(args.file, encoding="utf-8") as handle:
                specs = list(_parse_lines(handle, args.no_run))
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror}", EXIT_USAGE) from None
    client = redis_from(settings)
    guard(lambda: _register(settings, client, specs, quiet=True))
    running = sum(1 for s in specs if s.status == "running")
    print(f"imported {len(specs)} tasks ({running} running)")
    return EXIT_OK


def _parse_lines(lines: IO[str], no_run: bool) -> Iterator[TaskSpec]:
    seen: set[int] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            spec = _spec_from_json(json.loads(line), no_run)
        except (ValueError, TypeError, InvalidTaskError) as exc:
            raise CliError(f"line {number}: {exc}", EXIT_USAGE) from None
        if spec.task_id in seen:
            raise CliError(f"line {number}: task id {spec.task_id} appears twice", EXIT_USAGE)
        seen.add(spec.task_id)
        yield spec


def _spec_from_json(obj: Any, no_run: bool) -> TaskSpec:
    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object")
    unknown = sorted(set(obj) - SPEC_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}")
    if "id" not in obj or "keyword" not in obj:
        raise ValueError("'id' and 'keyword' are required")
    fields = {k: v for k, v in obj.items() if k not in ("id", "every")}
    if "exclude_keywords" in fields:
        excludes = fields["exclude_keywords"]
        if not isinstance(excludes, list) or not all(isinstance(w, str) for w in excludes):
            raise ValueError("exclude_keywords must be a list of strings")
        fields["exclude_keywords"] = tuple(excludes)
    if not isinstance(obj["keyword"], str):
        raise ValueError("keyword must be a string")
    every = obj.get("every")
    interval = parse_duration(every) if isinstance(every, str) else None
    if every is not None and not isinstance(every, str):
        raise ValueError("every must be a duration string such as '5m'")
    if no_run:
        fields["status"] = "stopped"
    return TaskSpec(task_id=obj["id"], interval_s=interval, **fields)


@connected
def task_delete(args: argparse.Namespace, settings: Settings, client: redis.Redis) -> int:
    lifecycle = Lifecycle(settings, client)
    missing = [t for t in args.task_ids if not lifecycle.delete(t, who="cli delete")]
    for task_id in args.task_ids:
        print(f"task {task_id}: " + ("not registered" if task_id in missing else "deleted"))
    return EXIT_NOT_FOUND if missing else EXIT_OK


@connected
def task_show(args: argparse.Namespace, settings: Settings, client: redis.Redis) -> int:
    spec = RedisTaskRegistry(client).get(args.task_id)
    if spec is None:
        raise CliError(f"task {args.task_id} is not registered", EXIT_NOT_FOUND)
    info = _describe(settings, client, [spec])[0]
    if args.json:
        print_json(info)
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {'' if value is None else value}")
    return EXIT_OK


@connected
def task_list(args: argparse.Namespace, settings: Settings, client: redis.Redis) -> int:
    rows = _describe(settings, client, RedisTaskRegistry(client).list())
    if args.json:
        print_json(rows)
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "keyword", "platform", "status", "every", "last crawl", "next run")
    for row in rows:
        table.add_row(
            str(row["task_id"]), str(row["keyword"]), str(row["platform"]), str(row["status"]),
            str(row["every"]), str(row["last_crawl"] or "-"), str(row["next_run"] or "-"),
        )  # fmt: skip
    Console().print(table)
    return EXIT_OK


def _describe(settings: Settings, client: redis.Redis, specs: Iterable[TaskSpec]) -> list[dict[str, object]]:
    specs = list(specs)
    states = task_states(client, settings.task_queue_stream, [s.task_id for s in specs])
    rows = []
    for spec in specs:
        state = states[spec.task_id]
        row: dict[str, object] = asdict(spec)
        row["exclude_keywords"] = list(spec.exclude_keywords)
        row["every"] = format_duration(spec.interval_s or settings.schedule_interval)
        row["last_crawl"] = state.status
        row["last_message"] = state.message
        row["next_run"] = (
            None
            if state.next_run_ms is None
            else format_timestamp(datetime.fromtimestamp(state.next_run_ms / 1000, UTC))
        )
        rows.append(row)
    return rows
