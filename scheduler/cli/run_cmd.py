"""``run``: the daemon in the foreground."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from scheduler.cli.common import EXIT_OK, CliError, Subparsers, add_config_option, settings_from
from scheduler.config.settings import Settings
from scheduler.daemon.startup import StartupError
from scheduler.logsetup import configure_logging

log = logging.getLogger(__name__)


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "run",
        help="run the scheduler daemon in the foreground",
        description="Read the task stream through the consumer group and crawl each task. SIGTERM/SIGINT: "
        "stop reading, finish in-flight crawls within app.shutdown_grace, exit 0; a second signal forces. "
        "With --processes N, a supervisor runs N such daemons, restarts any that dies under its own name, "
        "and sends the signals on.",
    )
    add_config_option(p)
    p.add_argument(
        "--consumer", metavar="NAME", help="consumer name (default: app.consumer_name, else host name)"
    )
    p.add_argument(
        "--workers", metavar="N", type=int, help="worker threads per process (default: app.worker_pool_size)"
    )
    p.add_argument(
        "--processes",
        metavar="N",
        type=int,
        help="daemon processes under one supervisor, consumers NAME-0 … NAME-(N-1), one status port for "
        "all (default: app.processes; 1: this process is the daemon, no supervisor)",
    )
    p.add_argument("--log-format", choices=["json", "text"], help="log format (default: app.log_format)")
    p.add_argument(
        "--print-config", action="store_true", help="print the effective settings (secrets masked)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(
        args,
        consumer_name=args.consumer,
        worker_pool_size=args.workers,
        log_format=args.log_format,
        processes=args.processes,
    )
    if args.print_config:
        json.dump(settings.masked(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return EXIT_OK
    configure_logging(settings.log_format, settings.log_level, secrets=settings.secrets())
    if settings.processes > 1:
        return supervise(settings, args)
    return start_and_run(settings)


def supervise(settings: Settings, args: argparse.Namespace) -> int:
    """``--processes N``: the supervisor; each child gets this command's own options."""
    from scheduler.daemon.supervisor import Supervisor

    passed: list[str] = []
    for flag, value in (
        ("--config", args.config),
        ("--workers", args.workers),
        ("--log-format", args.log_format),
    ):
        if value is not None:
            passed += [flag, str(value)]
    supervisor = Supervisor(settings, passed)
    try:
        return supervisor.run()
    except Exception as exc:
        log.debug("supervisor failed", exc_info=True)
        raise CliError(
            f"the supervisor failed: {type(exc).__name__}: {exc} (APP_LOG_LEVEL=debug logs the traceback)"
        ) from None


def start_and_run(settings: Settings) -> int:
    """The daemon's run; a failure before it has started is one line and exit 1, never a traceback
    (a refused password, a consumer name a live daemon holds, anything unforeseen)."""
    daemon = None
    try:
        from scheduler.daemon.app import Daemon  # grpc and friends load only for the daemon
        from scheduler.daemon.supervisor import child_side

        side = child_side()  # started by `run --processes N`: its status socket, its supervisor
        if side is not None and side.orphaned:
            log.warning("the supervisor exited before this daemon started: not starting")
            return EXIT_OK
        daemon = Daemon(settings, status_socket=side.status_socket if side else None)
        return daemon.run()
    except StartupError as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:
        if daemon is not None and daemon.started.is_set():
            raise  # a failure of a running daemon keeps its traceback
        log.debug("start-up failed", exc_info=True)
        raise CliError(
            f"the daemon could not start: {type(exc).__name__}: {exc} (APP_LOG_LEVEL=debug logs the traceback)"
        ) from None
