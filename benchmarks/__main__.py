"""``python -m benchmarks``: our daemon against the Python task queues on the same work, side by side.

Each queue gets a fresh private redis-server, a fresh fake crawler process (``python -m crawler_stub``,
no delay) and its own documented worker program, then: a warm-up, a throughput burst, a drain of a
pre-filled queue, a paced latency phase per rate. That is one run; the suite is run N times (order
alternating) at each concurrency, and every figure is the median of the runs, each run's value shown.
Figures are printed as tables with ratios to ours; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks import rounds as rounds_
from benchmarks.queues import DEFAULT, MULTI_PROCESS, QUEUES, QUICK
from benchmarks.runner import REPO, Options

PNG_NAME = "bench-latency.png"


def _numbers(kind: type[int] | type[float]) -> Any:
    """An argparse type: a comma-separated list of positive numbers."""

    def parse(text: str) -> list[int | float]:
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"want one or more positive numbers: {text!r}")
        return values

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--queues",
        help=f"comma-separated, from {','.join(QUEUES)} (default {','.join(DEFAULT)}; --quick: {','.join(QUICK)})",
    )
    parser.add_argument(
        "--procs",
        action="store_true",
        help=f"add the multi-process variants ({','.join(MULTI_PROCESS)}) to the queues (default list has them)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller figures: 1 run, 300 tasks, 2 s paced")
    parser.add_argument(
        "--runs",
        "--rounds",
        type=int,
        help="run every queue this many times, order reversed every other run; figures are the medians "
        "(default 5, --quick 1)",
    )
    parser.add_argument(
        "--tasks", type=int, help="tasks per throughput phase per run (default 1500, --quick 300)"
    )
    parser.add_argument(
        "--concurrency",
        type=_numbers(int),
        default=[8],
        help="worker threads/coroutines/processes per worker process, comma-separated: the whole suite runs at "
        "each, one set of tables per value (8)",
    )
    parser.add_argument(
        "--rate",
        type=_numbers(float),
        default=[200.0, 1000.0],
        help="paced latency phase: tasks per second, comma-separated: one phase per rate (200,1000)",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        help="length of each paced phase per run (default 4, --quick 2)",
    )
    parser.add_argument("--items", type=int, default=5, help="items in each fake crawler answer (5)")
    parser.add_argument("--keep-logs", action="store_true", help="keep every worker's log directory")
    parser.add_argument(
        "--json", metavar="PATH", help="also write every run's raw figures and the medians here"
    )
    parser.add_argument(
        "--png",
        metavar="PATH",
        help=f"latency distributions (CDF per queue, one panel per concurrency and rate); default: {PNG_NAME} "
        "next to --json if given, else a new file in the temp directory; its path is printed last",
    )
    return parser.parse_args(argv)


def queue_names(args: argparse.Namespace) -> list[str]:
    chosen = args.queues or ",".join(QUICK if args.quick else DEFAULT)
    names = [n.strip() for n in chosen.split(",") if n.strip()]
    if args.procs:
        names += [n for n in MULTI_PROCESS if n not in names]
    return names


def options(args: argparse.Namespace, concurrency: int) -> Options:
    return Options(
        tasks=args.tasks or (300 if args.quick else 1500),
        concurrency=concurrency,
        rates=tuple(sorted(args.rate)),
        latency_s=args.latency_seconds or (2.0 if args.quick else 4.0),
        warmup=20 if args.quick else 50,
        items=args.items,
        startup_timeout=30.0,
        throughput_timeout=6.0 if args.quick else 15.0,
        keep_logs=args.keep_logs,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = queue_names(args)
    unknown = [n for n in names if n not in QUEUES]
    if unknown:
        print(f"unknown queue(s): {', '.join(unknown)}; known: {', '.join(QUEUES)}", file=sys.stderr)
        return 2
    runs = max(1, args.runs or (1 if args.quick else 5))
    started = time.monotonic()
    command = "python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:])
    first = options(args, args.concurrency[0])
    print(
        f"{command}: {', '.join(names)}; {runs} run(s) of {first.tasks} tasks per phase at concurrency "
        f"{','.join(map(str, args.concurrency))}, paced at {','.join(f'{r:g}' for r in first.rates)}/s",
        file=sys.stderr,
    )
    suites = []
    for k, concurrency in enumerate(args.concurrency):
        where = f"concurrency {concurrency}" + (
            f" ({k + 1}/{len(args.concurrency)})" if len(args.concurrency) > 1 else ""
        )
        suites.append(rounds_.run_suite(names, options(args, concurrency), runs, where))

    lines = [f"$ {command}", *report.environment(REPO)]
    for suite in suites:
        lines += report.render(suite, options(args, suite.concurrency), runs)
    lines += report.footer(suites)
    lines.append(f"(whole run {time.monotonic() - started:.0f} s)")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(_payload(args, names, runs, suites), indent=1))
    _plot(args, suites, runs)
    return 0 if any(r.done for s in suites for rs in s.runs.values() for r in rs) else 1


def _payload(args: argparse.Namespace, names: list[str], runs: int, suites: list[rounds_.Suite]) -> Any:
    """Everything a later reader needs to redo the tables: options, commit, every run's raw figures
    (latency samples included), the medians and the pooled figures, per concurrency."""
    payload = {
        "commit": report.commit(REPO),
        "environment": report.environment(REPO),
        "queues": names,
        "runs": runs,
        "options": {**asdict(options(args, args.concurrency[0])), "concurrency": args.concurrency},
        "suites": [suite.to_json() for suite in suites],
    }
    return _finite(payload)


def _finite(value: Any) -> Any:
    """NaN (a figure that was not measured) as null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _plot(args: argparse.Namespace, suites: list[rounds_.Suite], runs: int) -> None:
    if args.png:
        path = Path(args.png)
    elif args.json:
        path = Path(args.json).with_name(PNG_NAME)
    else:
        path = Path(tempfile.mkstemp(prefix="bench-latency-", suffix=".png")[1])
    try:
        from benchmarks import plot
    except ImportError as exc:  # matplotlib is in benchmarks/requirements.txt; a bare venv may lack it
        print(f"(no latency plot: {exc})", file=sys.stderr)
        return
    if plot.latency_cdf(suites, sorted(args.rate), runs, path):
        print(f"(latency distributions: {path})")
    else:
        print("(no latency plot: no queue was measured at any rate)")


if __name__ == "__main__":
    sys.exit(main())
