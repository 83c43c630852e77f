"""``demo``: the whole system on this machine, with live progress and a summary (scheduler.devtools.demo runs it).

It ends after ``--seconds``, or on Ctrl-C / SIGTERM / SIGHUP: the daemon gets SIGTERM and drains, then the
crawler and Redis stop, and the summary prints. Ctrl-C is the normal way to end an open-ended demo, so it
is not an error in itself: the exit code is 0 when every sample task was crawled at least once and the
daemon exited 0, else 1 with the reason. A second signal forces (everything is killed at once): 130, as
is an interruption during start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Callable

import redis
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from scheduler.cli.common import EXIT_FAIL, EXIT_OK, CliError, Subparsers
from scheduler.config.durations import parse_duration
from scheduler.devtools.demo import MAX_TASKS, DemoSystem, Interrupted
from scheduler.devtools.progress import Tracker
from scheduler.devtools.samples import sample_specs, samples
from scheduler.errors import SchedulerError
from scheduler.signals import Signals

EXIT_INTERRUPTED = 130
POLL_S = 0.5
WIDE = 110  # terminal columns from which the tables show the platform


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole system on this machine: private Redis, fake crawler, daemon, sample tasks",
        description="Start a private redis-server, the fake crawler and the daemon, register sample "
        "searches on a short schedule, show their progress live, and end with a summary. Ends after "
        "--seconds or on Ctrl-C (a second Ctrl-C forces); leaves no process behind. Exit 0 when every "
        "sample task was crawled at least once, 1 otherwise, 130 when forced.",
    )
    p.add_argument(
        "--tasks", type=_bounded(1, MAX_TASKS), default=8, metavar="N", help="sample tasks (default 8)"
    )
    p.add_argument(
        "--seconds", type=_positive, metavar="S", help="stop after S seconds (default: run until Ctrl-C)"
    )
    p.add_argument(
        "--workers", type=_bounded(1, 64), default=4, metavar="N", help="daemon workers (default 4)"
    )
    p.add_argument(
        "--interval", type=_interval, default=5.0, metavar="DURATION", help="period of each task (default 5s)"
    )
    p.add_argument("--keep-data", action="store_true", help="keep the work directory (logs, Redis data)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Not a terminal (CI, a test, a pipe): no live table, plain lines wide enough not to wrap in a log.
    # Sample scripts such as [fail=UNKNOWN*4] must print as written: no rich markup anywhere.
    if sys.stdout.isatty():
        console = Console(highlight=False, markup=False)
    else:
        console = Console(width=140, soft_wrap=True, highlight=False, markup=False)
    signals = Signals(signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
    restore = signals.install()
    system = DemoSystem(workers=args.workers, keep_data=args.keep_data, stop=signals.stop)
    try:
        console.print(f"starting a private Redis, the fake crawler and the daemon in {system.workdir}")
        code = _run(console, system, signals, args)
        if code == EXIT_FAIL:
            system.keep_data = True
        if system.keep_data:
            console.print(
                f"work directory kept: {system.workdir} (daemon.log, config.json, crawler-calls.jsonl)"
            )
        else:
            console.print(
                "work directory removed (--keep-data keeps the daemon log, its config, the calls log)"
            )
        return code
    except (SchedulerError, redis.RedisError) as exc:
        system.keep_data = True
        raise CliError(f"{exc}\n(work directory kept: {system.workdir})") from None
    finally:
        system.close(signals.forced)
        restore()


def _run(console: Console, system: DemoSystem, signals: Signals, args: argparse.Namespace) -> int:
    try:
        system.start()
    except Interrupted as exc:
        console.print(str(exc))
        return EXIT_INTERRUPTED
    assert system.redis is not None and system.client is not None and system.settings is not None
    console.print("pids: " + " ".join(f"{name}={pid}" for name, pid in system.pids().items()))
    console.print(
        f"redis {system.redis.url} ({system.redis.binary}) · metrics "
        f"http://127.0.0.1:{system.metrics_port}/metrics · daemon log {system.daemon_log}"
    )
    chosen = samples(args.tasks)
    system.register(sample_specs(chosen, args.interval))
    console.print(f"registered {len(chosen)} sample searches, each every {args.interval:g}s; Ctrl-C ends")
    tracker = Tracker(system.client, system.settings, chosen, system.calls_log)
    started = time.monotonic()
    ended_by = _watch(console, system, tracker, started, args.seconds, signals)
    console.print(f"stopping ({ended_by}): SIGTERM to the daemon, which drains its in-flight crawls")
    daemon_exit = system.stop_daemon(signals.forced)
    _print_events(console, tracker, started)  # outcomes recorded during the drain
    return _summary(console, tracker, daemon_exit, forced=signals.forced.is_set())


def _watch(
    console: Console,
    system: DemoSystem,
    tracker: Tracker,
    started: float,
    seconds: float | None,
    signals: Signals,
) -> str:
    live = (
        Live(
            _progress_table(tracker, started, seconds, wide=console.width >= WIDE),
            console=console,
            transient=True,
        )
        if console.is_terminal
        else None
    )
    last_line, last_state = 0.0, None
    with live or contextlib.nullcontext():
        while True:
            _print_events(console, tracker, started)
            if live is not None:
                live.update(_progress_table(tracker, started, seconds, wide=console.width >= WIDE))
            elif time.monotonic() - last_line >= 2.0 and tracker.queue != last_state:
                console.print(f"{time.monotonic() - started:6.1f}s  {_queue_line(tracker)}")
                last_line, last_state = time.monotonic(), tracker.queue
            if signals.stop.is_set():
                return f"{signals.received[0]} received"
            if seconds is not None and time.monotonic() - started >= seconds:
                return f"{seconds:g}s elapsed"
            if not system.daemon_alive():
                return "the daemon exited on its own"
            signals.stop.wait(POLL_S)


def _print_events(console: Console, tracker: Tracker, started: float) -> None:
    for task_id, event in tracker.poll():
        search = tracker.tasks[task_id].sample.search
        console.print(f"{time.monotonic() - started:6.1f}s  #{task_id} {search:<20} {event}")


def _queue_line(tracker: Tracker) -> str:
    q = tracker.queue
    return (
        f"queue {q.length} · pending {q.pending} · delayed retries {q.delayed} · dead letters "
        f"{q.dead_letters} · workers busy {q.busy}/{q.workers} · circuit {q.circuit}"
    )


STATUS_STYLES = {"success": "green", "no_items": "cyan", "failed": "red"}


def _task_table(tracker: Tracker, title: str, *, summary: bool, wide: bool) -> Table:
    # The search column takes what is left and wraps; the figures never wrap (80 columns still fit).
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("search", ratio=1, overflow="fold")
    if wide:
        table.add_column("platform", no_wrap=True)
    for name in (
        "crawls",
        "failed",
        "calls",
        "status",
        "items",
        "new",
        "dead\nletters" if summary else "next",
    ):
        table.add_column(name, justify="left" if name == "status" else "right", no_wrap=True)
    for task_id, t in tracker.tasks.items():
        search = t.sample.search + (f" [{t.sample.script}]" if t.sample.script else "")
        platform = [t.sample.platform] if wide else []
        if summary:
            last = str(t.dead_letters)
        else:
            last = "-" if t.next_run_in is None else f"{t.next_run_in:.0f}s"
        table.add_row(
            str(task_id), search, *platform, str(t.crawls), str(t.failed), str(t.calls),
            Text(t.status or "waiting", style=STATUS_STYLES.get(t.status, "dim")),
            str(t.items), str(t.new_items), last,
        )  # fmt: skip
    return table


def _progress_table(tracker: Tracker, started: float, seconds: float | None, *, wide: bool) -> Table:
    table = _task_table(tracker, "GoodsHunter scheduler demo", summary=False, wide=wide)
    left = (
        f" · {max(0.0, seconds - (time.monotonic() - started)):.0f}s left" if seconds else " · Ctrl-C to stop"
    )
    table.caption = f"{_queue_line(tracker)} · {time.monotonic() - started:.0f}s{left}"
    return table


def _summary(console: Console, tracker: Tracker, daemon_exit: int | None, *, forced: bool) -> int:
    table = _task_table(tracker, "Summary", summary=True, wide=console.width >= WIDE)
    tasks = list(tracker.tasks.values())
    table.add_section()
    table.add_row(
        "", "total", *([""] if console.width >= WIDE else []), str(sum(t.crawls for t in tasks)),
        str(sum(t.failed for t in tasks)), str(sum(t.calls for t in tasks)), "",
        str(sum(t.items for t in tasks)), str(sum(t.new_items for t in tasks)),
        str(sum(t.dead_letters for t in tasks)),
    )  # fmt: skip
    console.print(table)
    for task_id, t in tracker.tasks.items():
        if t.sample.shows:
            seen = "as shown above" if t.as_expected else "NOT seen this time"
            console.print(f"#{task_id} {t.sample.search} [{t.sample.script}]: {t.sample.shows} ({seen}).")
    console.print(
        "crawls: finished crawls, failed ones included (each was requeued or dead-lettered); calls = gRPC calls the crawler "
        "answered, retries within a crawl included; new = items this task had not seen before."
    )
    console.print(f"daemon: {'killed (forced)' if forced else f'exited {daemon_exit}'}")
    missing = [f"#{i} {t.sample.search}" for i, t in tracker.tasks.items() if not t.crawled]
    if forced:
        console.print("result: forced stop")
        return EXIT_INTERRUPTED
    if missing:
        console.print(f"result: FAILED: not crawled: {', '.join(missing)}")
        return EXIT_FAIL
    if daemon_exit != 0:
        console.print(f"result: FAILED: the daemon exited with {daemon_exit}, not 0")
        return EXIT_FAIL
    console.print(f"result: OK: all {len(tasks)} sample tasks crawled")
    return EXIT_OK


def _bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return value


def _interval(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 1.0:
        raise argparse.ArgumentTypeError(f"must be at least 1s, got {text!r}")
    return value
