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
        "stop reading, finish in-flight crawls within app.shutdown_grace, exit 0; a second signal forces.",
    )
    add_config_option(p)
    p.add_argument(
        "--consumer", metavar="NAME", help="consumer name (default: app.consumer_name, else host name)"
    )
    p.add_argument("--workers", metavar="N", type=int, help="worker threads (default: app.worker_pool_size)")
    p.add_argument("--log-format", choices=["json", "text"], help="log format (default: app.log_format)")
    p.add_argument(
        "--print-config", action="store_true", help="print the effective settings (secrets masked)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(
        args, consumer_name=args.consumer, worker_pool_size=args.workers, log_format=args.log_format
    )
    if args.print_config:
        json.dump(settings.masked(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return EXIT_OK
    configure_logging(settings.log_format, settings.log_level, secrets=settings.secrets())
    return start_and_run(settings)


def start_and_run(settings: Settings) -> int:
    """The daemon's run; a failure before it has started is one line and exit 1, never a traceback
    (a refused password, a consumer name a live daemon holds, anything unforeseen)."""
    daemon = None
    try:
        from scheduler.daemon.app import Daemon  # grpc and friends load only for the daemon

        daemon = Daemon(settings)
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
