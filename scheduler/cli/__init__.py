"""The ``goodshunter-scheduler`` command line: the daemon, task entry, inspection and repair, the demo.

Exit codes: 0 success; 1 an operational failure (Redis unreachable, health check failed); 2 bad input
(usage, invalid value, bad config); 3 something named does not exist (unknown task, dead letter).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from scheduler import __version__
from scheduler.cli import demo_cmd, inspect_cmds, run_cmd, task_cmds
from scheduler.cli.common import EXIT_USAGE, CliError, Command, report_error

MODULES = [run_cmd, task_cmds, inspect_cmds, demo_cmd]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="goodshunter-scheduler",
        description="GoodsHunter scheduler: Redis Streams task queue and crawler daemon.",
        epilog="Settings: --config FILE (default configs/config.json when present), then APP_* / REDIS_* "
        "environment variables. See docs/CONFIGURATION.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command | None = getattr(args, "handler", None)
    if command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return command(args)
    except CliError as exc:
        return report_error(exc)
    except KeyboardInterrupt:
        return 130
