"""``python -m benchmarks``: our daemon against the Python task queues on the same work, side by side.

Each queue gets a fresh private redis-server, a fresh fake crawler process (``python -m crawler_stub``,
no delay) and its own documented worker program, then: a warm-up, a throughput burst, a paced latency
run. Figures are printed as tables with ratios to ours; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from benchmarks import report
from benchmarks import rounds as rounds_
from benchmarks.queues import DEFAULT, QUEUES, QUICK
from benchmarks.runner import REPO, Baseline, Options, Result, run_baseline, run_queue


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks",
        type=int,
        help="tasks per throughput phase, all rounds together (default 3000, --quick 300)",
    )
    parser.add_argument(
        "--queues",
        help=f"comma-separated, from {','.join(QUEUES)} (default {','.join(DEFAULT)}; --quick: {','.join(QUICK)})",
    )
    parser.add_argument("--quick", action="store_true", help="smaller figures: the whole run under a minute")
    parser.add_argument("--concurrency", type=int, default=8, help="worker threads/coroutines/processes (8)")
    parser.add_argument("--rate", type=float, default=200.0, help="latency phase: tasks per second (200)")
    parser.add_argument(
        "--latency-seconds",
        type=float,
        help="latency phase length, all rounds together (default 8, --quick 2)",
    )
    parser.add_argument("--items", type=int, default=5, help="items in each fake crawler answer (5)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="run every queue this many times, order reversed each round (default 2, --quick 1)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep every worker's log directory")
    parser.add_argument("--json", metavar="PATH", help="also write the raw figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = args.queues or ",".join(QUICK if args.quick else DEFAULT)
    names = [n.strip() for n in chosen.split(",") if n.strip()]
    unknown = [n for n in names if n not in QUEUES]
    if unknown:
        print(f"unknown queue(s): {', '.join(unknown)}; known: {', '.join(QUEUES)}", file=sys.stderr)
        return 2
    rounds = max(1, args.rounds or (1 if args.quick else 2))
    opts = Options(
        tasks=(args.tasks or (300 if args.quick else 3000)) // rounds,
        concurrency=args.concurrency,
        rate=args.rate,
        latency_s=(args.latency_seconds or (2.0 if args.quick else 8.0)) / rounds,
        warmup=20 if args.quick else 50,
        items=args.items,
        startup_timeout=30.0,
        throughput_timeout=6.0 if args.quick else 15.0,
        keep_logs=args.keep_logs,
    )
    started = time.monotonic()
    command = "python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(f"{command}: {', '.join(names)}; {rounds} round(s) of {opts.tasks} tasks", file=sys.stderr)

    per_queue: dict[str, list[Result]] = {name: [] for name in names}
    per_mode: dict[str, list[Baseline]] = {"sync": [], "aio": []}
    for k in range(rounds):
        for mode, bases in per_mode.items():
            bases.append(base := run_baseline(mode, opts))
            status = base.error or f"{base.throughput:.0f} calls/s, {base.cpu_ms:.3f} ms CPU/call"
            print(f"  round {k + 1}  gRPC-only {mode:5} {status}", file=sys.stderr)
        for name in names if k % 2 == 0 else names[::-1]:
            t0 = time.monotonic()
            per_queue[name].append(result := run_queue(name, opts))
            print(
                f"  round {k + 1}  {name:10} {_status(result)} ({time.monotonic() - t0:.0f} s)",
                file=sys.stderr,
            )
    results = [rounds_.merge(per_queue[name]) for name in names]
    baselines = {mode: rounds_.merge_baselines(bases) for mode, bases in per_mode.items()}
    opts = replace(opts, tasks=opts.tasks * rounds, latency_s=opts.latency_s * rounds)

    lines = [f"$ {command}", *report.environment(REPO)]
    lines += report.render(results, baselines, opts, rounds)
    lines.append(f"(whole run {time.monotonic() - started:.0f} s)")
    print("\n".join(lines))
    if args.json:
        payload = {
            "options": asdict(opts),
            "baselines": {k: asdict(v) for k, v in baselines.items()},
            "results": [asdict(r) for r in results],
        }
        Path(args.json).write_text(json.dumps(payload, indent=1))
    return 0 if any(r.done for r in results) else 1


def _status(result: Result) -> str:
    if result.error and not result.done:
        return f"FAILED: {result.error}"
    return (
        f"{result.throughput:.0f} tasks/s e2e, {result.drain:.0f} drain, p50 "
        f"{report.f(report.pct(result.latencies_ms, 0.5))} ms, {result.cpu_ms:.3f} ms CPU/task, "
        f"load {result.load[0]:.1f}" + (f" [{result.error}]" if result.error else "")
    )


if __name__ == "__main__":
    sys.exit(main())
