"""``python -m scheduler.chaos``: run scenarios, print the table, exit 0 only when every verdict is ok."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from scheduler.chaos.faults import FAULTS
from scheduler.chaos.gh_run import check_faults, run_class
from scheduler.chaos.report import Row, data_table, failures, table, write_json
from scheduler.chaos.runner import SCENARIOS, Options

QUICK_DEFAULT = [
    "client-kill", "proxy", "pause", "kill9", "sigstop", "sigterm", "crawler", "crawler-hang",
    "redis-restart", "redis-restart-everysec", "trim", "backlog", "idle-kill", "mixed",
    "mysql-kill9",  # skipped, with one line, where no MariaDB answers
]  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scheduler.chaos",
        description="Randomized fault harness: lost / unexpected / duplicated / stuck per scenario. "
        "Without --quick: one long 'mixed' run (--minutes, default 30).",
    )
    parser.add_argument(
        "--scenario",
        "--scenarios",
        dest="scenarios",
        metavar="A,B",
        help=f"scenarios to run, comma-separated: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--faults",
        metavar="A,B",
        help=f"one custom scenario of these faults: {', '.join(FAULTS)}; also backlog, and mysql (the "
        "daemons on app.task_store = mysql with their mails checked, as in mysql-kill9)",
    )
    parser.add_argument("--seed", help="replay a run (printed by every run); default: random")
    parser.add_argument(
        "--quick", action="store_true", help="short runs (20 s of faults, 5,000-task backlog)"
    )
    parser.add_argument("--minutes", type=float, help="long mode: minutes of faults (default 30)")
    parser.add_argument("--seconds", type=float, help="seconds of faults per scenario (overrides both)")
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--delay-ms", type=int, default=100, help="the fake crawler's delay per call")
    parser.add_argument("--rate", type=float, default=15.0, help="unique tasks submitted per second")
    parser.add_argument("--shared", type=int, default=5, help="shared task ids (executes, stops, re-enables)")
    parser.add_argument("--backlog", type=int, help="tasks of the backlog scenario (100,000; --quick 5,000)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--keep", action="store_true", help="keep every run's logs (failed runs' always)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print fault events as they happen")
    return parser.parse_args(argv)  # fmt: skip


def plan(args: argparse.Namespace) -> list[tuple[str, tuple[str, ...]]]:
    if args.faults:
        faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
        bad = [f for f in faults if f not in FAULTS and f not in ("backlog", "mysql")]
        if bad:
            raise SystemExit(
                f"unknown fault(s): {', '.join(bad)}; known: {', '.join(FAULTS)}, backlog, mysql"
            )
        if why := check_faults(faults):
            raise SystemExit(why)
        return [("+".join(faults), faults)]
    names = args.scenarios.split(",") if args.scenarios else (QUICK_DEFAULT if args.quick else ["mixed"])
    bad = [n for n in names if n not in SCENARIOS]
    if bad:
        raise SystemExit(f"unknown scenario(s): {', '.join(bad)}; known: {', '.join(SCENARIOS)}")
    return [(name, SCENARIOS[name]) for name in names]


def command(args: argparse.Namespace | None, scenario: str, seed: str, opts: Options) -> str:
    """The command line that replays this scenario with these options."""
    words = ["python", "-m", "scheduler.chaos"]
    custom = args is not None and args.faults
    words += ["--faults", scenario.replace("+", ",")] if custom else ["--scenario", scenario]
    words += ["--seed", seed, "--seconds", f"{opts.seconds:g}", "--daemons", str(opts.daemons)]
    words += ["--workers", str(opts.workers), "--delay-ms", str(opts.delay_ms), "--rate", f"{opts.rate:g}"]
    words += ["--shared", str(opts.shared)]
    if scenario == "backlog" or "backlog" in scenario.split("+"):
        words += ["--backlog", str(opts.backlog)]
    return shlex.join(words)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed or os.urandom(4).hex()
    seconds = args.seconds or (20.0 if args.quick else 60.0 * (args.minutes or 30.0))
    backlog = args.backlog or (5000 if args.quick else 100_000)
    opts = Options(seconds, args.daemons, args.workers, args.delay_ms, args.rate, args.shared, backlog,
                   keep=args.keep, quiet=args.quiet)  # fmt: skip
    print(f"chaos: seed {seed}", flush=True)
    rows: list[Row] = []
    try:
        for scenario, faults in plan(args):
            cmd = command(args, scenario, seed, opts)
            print(f"== {scenario}: {cmd}", flush=True)
            row = run_class(faults)(scenario, faults, seed, opts, cmd).execute()
            rows.append(row)
            if row.error == "interrupted":
                raise KeyboardInterrupt
            if row.skipped:
                print(f"   skipped: {row.skipped}", flush=True)
                continue
            print(f"   {row.verdict} in {row.seconds:.0f}s", flush=True)
            if not row.ok:
                print(failures([row]), flush=True)
    except KeyboardInterrupt:
        print("chaos: interrupted; every process of the run was killed", file=sys.stderr)
    print()
    print(table(rows))
    if data := data_table(rows):
        print()
        print(data)
    report = failures(rows)
    if report:
        print()
        print(report)
    if args.json:
        write_json(rows, args.json)
    return 0 if rows and all(row.ok for row in rows) and len(rows) == len(plan(args)) else 1


if __name__ == "__main__":
    sys.exit(main())
