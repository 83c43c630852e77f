"""How cost grows: submit cost against raw redis-py, drain rate against queue depth, Redis bytes per task,
the periodic publisher's tick with many tasks, the daemon's RSS after many tasks. Printed as ratios, one
table per section; every figure is the median of ``--runs`` runs, each run shown in brackets.

    python -m benchmarks.scale [--quick] [--runs N] [--sections submit,drain,...] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from benchmarks import scale_daemon as sd
from benchmarks.queues.ours import register_specs
from benchmarks.scale_daemon import progress
from scheduler.config.settings import Settings
from scheduler.devtools.redis_server import RedisServer
from scheduler.taskqueue import Producer, keys
from scheduler.taskqueue.message import TaskMessage
from scheduler.tasks.lifecycle import Lifecycle

INTERVAL_MS = 300_000  # the default schedule_interval


@dataclass(frozen=True)
class Sizes:
    submit: int
    depths: tuple[int, ...]
    memory: int
    periodic: int
    rss: int


FULL = Sizes(submit=20_000, depths=(1_000, 100_000, 1_000_000), memory=100_000, periodic=100_000, rss=200_000)
QUICK = Sizes(submit=2_000, depths=(1_000, 100_000), memory=20_000, periodic=20_000, rss=20_000)


def med(runs: Sequence[float]) -> float:
    return statistics.median(runs)


def cell(runs: Sequence[float], fmt: str = "{:.0f}") -> str:
    """``median (run run run)``: the spread is part of the figure on a shared machine."""
    return f"{fmt.format(med(runs))} ({' '.join(fmt.format(r) for r in runs)})"


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, ["-" * w for w in widths], *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- 1. submit cost ----------------------------------------------------------------------------------------


def submit_cost(n: int, runs: int) -> dict[str, list[float]]:
    """Producer.submit_task / submit_many against redis-py XADD of the identical entry (stream, one ``data``
    field, no MAXLEN). ``raw`` gets its payloads encoded beforehand, the least any client can do;
    ``raw+encode`` builds each with TaskMessage inside the loop, so ours/raw+encode is the Producer's own
    overhead. The order alternates every run, and the stream is deleted after each."""
    ids = range(1, n + 1)
    with RedisServer() as server:
        client = server.client()
        producer = Producer(client)
        modes: dict[str, Callable[[list[str]], object]] = {
            "ours_one": lambda _: [producer.submit_task(i, "user_create") for i in ids],
            "raw_one": lambda payloads: [xadd(client, data) for data in payloads],
            "raw_encode_one": lambda _: [xadd(client, message(i)) for i in ids],
            "ours_many": lambda _: producer.submit_many(ids, "user_create"),
            "raw_many": lambda payloads: xadd_pipelined(client, payloads),
            "raw_encode_many": lambda _: xadd_pipelined(client, [message(i) for i in ids]),
        }
        out: dict[str, list[float]] = {name: [] for name in modes}
        for run in range(runs):
            for name in list(modes)[:: 1 if run % 2 == 0 else -1]:
                out[name].append(n / time_submit(client, modes[name], [message(i) for i in ids]))
    return out


def message(task_id: int) -> str:
    return TaskMessage.new(task_id, "execute", "user_create").encode()


def xadd(client: redis.Redis, data: str) -> object:
    return client.xadd(keys.DEFAULT_STREAM, {keys.DATA_FIELD: data})


def xadd_pipelined(client: redis.Redis, payloads: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for data in payloads:
        pipe.xadd(keys.DEFAULT_STREAM, {keys.DATA_FIELD: data})
    pipe.execute()


def time_submit(client: redis.Redis, submit: Callable[[list[str]], object], payloads: list[str]) -> float:
    """Seconds of one submit loop; then checks every entry arrived and empties the stream for the next."""
    seconds = timed(lambda: submit(payloads))
    if client.xlen(keys.DEFAULT_STREAM) != len(payloads):
        raise RuntimeError(f"{client.xlen(keys.DEFAULT_STREAM)} entries in the stream, {len(payloads)} sent")
    client.delete(keys.DEFAULT_STREAM)
    return seconds


def show_submit(raw: dict[str, list[float]], n: int) -> None:
    rows = []
    for what, kind, target in (("one at a time", "one", 0.9), ("pipelined", "many", 0.7)):
        ours, base, encode = raw[f"ours_{kind}"], raw[f"raw_{kind}"], raw[f"raw_encode_{kind}"]
        ratios = [o / r for o, r in zip(ours, base, strict=True)]
        own = [o / r for o, r in zip(ours, encode, strict=True)]
        hit = "yes" if med(ratios) >= target else "NO"
        rows.append([what, cell(ours), cell(base), cell(encode), cell(ratios, "{:.2f}"), f">= {target}", hit,
                     cell(own, "{:.2f}")])  # fmt: skip
    header = [
        "submit",
        "ours entries/s",
        "raw XADD",
        "raw+encode",
        "ours/raw",
        "target",
        "met",
        "ours/raw+encode",
    ]
    table(
        f"1. Submit cost: {n} entries, Producer vs redis-py XADD of the same entry (entries/s)", header, rows
    )


# -- 2. drain rate against depth ---------------------------------------------------------------------------


def drain(depths: Sequence[int], runs: int, window: int = 3000) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for depth in depths:
        for run in range(runs):
            progress(f"drain: depth {depth}, run {run + 1}/{runs}")
            for key, rate in sd.drain_rate(depth, window, registered=window + 2000).items():
                out.setdefault(str(depth), {}).setdefault(key, []).append(rate)
    return out


def show_drain(raw: dict[str, dict[str, list[float]]]) -> None:
    base = raw[min(raw, key=int)]["rate_first_1000"]
    rows = []
    for depth, figures in raw.items():
        first = figures["rate_first_1000"]
        ratios = [r / med(base) for r in first]
        window = figures.get("rate_first_3000")
        flat = "yes" if abs(med(ratios) - 1) <= 0.10 else "NO"
        paused = cell(figures["paused_s"], "{:.1f}")
        rows.append([f"{int(depth):,}", cell(first), cell(ratios, "{:.2f}"), cell(window) if window else "-",
                     flat, paused])  # fmt: skip
    header = ["queued", "tasks/s first 1000", "x 1k depth", "tasks/s first 3000", "within 10%", "paused s"]
    title = ("2. Drain rate against queue depth: the daemon paused (SIGSTOP) while the backlog is queued, "
             "resume -> Nth completion on the results stream")  # fmt: skip
    table(title, header, rows)


# -- 3. Redis memory per task -------------------------------------------------------------------------------


def schedule(client: redis.Redis, ids: range, due: bool) -> None:
    """What set_status.lua writes for a running periodic task (schedule score, interval), pipelined; due:
    every task's next run is in the past."""
    sec, micros = client.time()
    now_ms = sec * 1000 + micros // 1000
    score = now_ms - 1000 if due else now_ms + INTERVAL_MS
    stream = keys.DEFAULT_STREAM
    for start in range(0, len(ids), sd.CHUNK):
        pipe = client.pipeline(transaction=False)
        for task_id in ids[start : start + sd.CHUNK]:
            pipe.zadd(keys.schedule_set(stream), {str(task_id): score})
            pipe.hset(keys.intervals_hash(stream), str(task_id), INTERVAL_MS)
        pipe.execute()


def memory(n: int, runs: int) -> dict[str, list[float]]:
    """INFO used_memory before and after each kind of per-task state, on top of one another, in bytes."""
    out: dict[str, list[float]] = {"entry": [], "spec": [], "schedule": []}
    ids = range(1, n + 1)
    with RedisServer() as server:
        client = server.client()
        steps: dict[str, Callable[[], None]] = {
            "entry": lambda: sd.fill(client, ids),
            "spec": lambda: register_specs(client, ids),
            "schedule": lambda: schedule(client, ids, due=False),
        }
        for _run in range(runs):
            client.flushall()
            for name, step in steps.items():
                before = int(client.info("memory")["used_memory"])
                step()
                out[name].append((int(client.info("memory")["used_memory"]) - before) / n)
    return out


def show_memory(raw: dict[str, list[float]], n: int) -> None:
    what = {"entry": "queued entry (stream)", "spec": "registered spec (hash + index set)",
            "schedule": "periodic schedule (zset + interval hash)"}  # fmt: skip
    rows = [[what[k], cell(v)] for k, v in raw.items()]
    rows.append(["queued + spec + schedule", f"{sum(med(v) for v in raw.values()):.0f}"])
    table(f"3. Redis memory per task: INFO used_memory, {n} of each", ["state", "bytes per task"], rows)


# -- 4. periodic publisher ---------------------------------------------------------------------------------


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def ticks(client: redis.Redis, life: Lifecycle, count: int) -> dict[str, float]:
    """``count`` calls of Lifecycle.publish_due (what the daemon's maintenance thread does about once a
    second); its work is a Lua script, so Redis's CPU is the cost, the client's only the round-trip."""
    walls, published = [], 0
    cpu0, own0 = redis_cpu(client), time.process_time()
    for _ in range(count):
        t0 = time.perf_counter()
        published += life.publish_due()[0]
        walls.append(time.perf_counter() - t0)
    cpu, own = redis_cpu(client) - cpu0, time.process_time() - own0
    return {"ms": med(walls) * 1000, "redis_cpu_ms": cpu * 1000 / count,
            "client_cpu_ms": own * 1000 / count, "published": published / count}  # fmt: skip


def publisher(n: int, runs: int) -> dict[str, dict[str, list[float]]]:
    """One tick with no periodic tasks, with ``n`` none of which is due (the usual tick), and with ``n``
    all due (each tick publishes the script's limit, 1000). In-process, the daemon is not needed."""
    out: dict[str, dict[str, list[float]]] = {}
    ids = range(1, n + 1)
    with RedisServer() as server:
        client = server.client()
        life = Lifecycle(Settings(), client)
        for _run in range(runs):
            for case, setup, count in (("none", None, 50), (f"{n} idle", False, 50), (f"{n} due", True, 5)):
                client.flushall()
                client.xgroup_create(keys.DEFAULT_STREAM, keys.DEFAULT_GROUP, id="0", mkstream=True)
                if setup is not None:
                    schedule(client, ids, due=setup)
                for key, value in ticks(client, life, count).items():
                    out.setdefault(case, {}).setdefault(key, []).append(value)
    return out


def show_publisher(raw: dict[str, dict[str, list[float]]]) -> None:
    none = med(raw["none"]["redis_cpu_ms"])
    rows = []
    for case, f in raw.items():
        ratio = [c / none for c in f["redis_cpu_ms"]] if none > 0 else []
        rows.append([case, f"{med(f['published']):.0f}", cell(f["ms"], "{:.3f}"), cell(f["redis_cpu_ms"], "{:.3f}"),
                     cell(ratio, "{:.1f}") if ratio else "-", cell(f["client_cpu_ms"], "{:.3f}")])  # fmt: skip
    header = [
        "periodic tasks",
        "published/tick",
        "ms/tick",
        "Redis CPU ms/tick",
        "x none",
        "client CPU ms/tick",
    ]
    table("4. Periodic publisher: one Lifecycle.publish_due tick (median tick; CPU averaged)", header, rows)


# -- 5. daemon RSS -----------------------------------------------------------------------------------------


def rss(n: int, runs: int) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for run in range(runs):
        progress(f"rss: {n} tasks, run {run + 1}/{runs}")
        for key, value in sd.rss_growth(n).items():
            out.setdefault(key, []).append(value)
    return out


def show_rss(raw: dict[str, list[Any]], n: int) -> None:
    growth = raw["growth_mib"]
    row = [f"{n:,}", cell(raw["before_mib"], "{:.1f}"), cell(raw["after_mib"], "{:.1f}"),
           cell(growth, "{:+.1f}"), "< 10", "yes" if med(growth) < 10 else "NO"]  # fmt: skip
    header = ["tasks", "VmRSS MiB after warm-up", "VmRSS MiB after", "growth MiB", "target", "met"]
    table("5. Daemon RSS (python -m scheduler run, its process tree): after 1000 warm-up tasks, then after N more",
          header, [row])  # fmt: skip


# -- the run -----------------------------------------------------------------------------------------------


# each section: how it is measured (sizes, runs) and how its table is printed (raw figures, sizes)
MEASURE: dict[str, Callable[[Sizes, int], Any]] = {
    "submit": lambda sizes, runs: submit_cost(sizes.submit, runs),
    "drain": lambda sizes, runs: drain(sizes.depths, runs),
    "memory": lambda sizes, runs: memory(sizes.memory, runs),
    "publisher": lambda sizes, runs: publisher(sizes.periodic, runs),
    "rss": lambda sizes, runs: rss(sizes.rss, runs),
}
SHOW: dict[str, Callable[[Any, Sizes], None]] = {
    "submit": lambda raw, sizes: show_submit(raw, sizes.submit),
    "drain": lambda raw, sizes: show_drain(raw),
    "memory": lambda raw, sizes: show_memory(raw, sizes.memory),
    "publisher": lambda raw, sizes: show_publisher(raw),
    "rss": lambda raw, sizes: show_rss(raw, sizes.rss),
}
SECTIONS = tuple(MEASURE)


def run_section(name: str, sizes: Sizes, runs: int, rss_runs: int) -> tuple[dict[str, Any], float]:
    progress(f"{name}: start")
    t0, load = time.perf_counter(), os.getloadavg()[0]  # the machine is shared: say how busy it was
    raw = MEASURE[name](sizes, runs if name != "rss" else rss_runs)
    SHOW[name](raw, sizes)
    seconds = time.perf_counter() - t0
    print(
        f"  ({name}: {seconds:.0f} s; 1-minute load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)"
    )
    return raw, seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (the median is shown)")
    parser.add_argument("--rss-runs", type=int, help="runs of the RSS section (default: --runs)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {SECTIONS}")
    parser.add_argument("--json", metavar="PATH", help="write every raw figure here")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    sizes = QUICK if args.quick else FULL
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    report: dict[str, Any] = {"commit": commit.stdout.strip(), "quick": args.quick, "runs": args.runs,
                              "sizes": sizes.__dict__, "sections": {}, "seconds": {}}  # fmt: skip
    print(
        f"commit {report['commit'][:12]}, {'quick' if args.quick else 'full'} sizes, median of {args.runs} runs"
    )
    for name in sections:
        raw, seconds = run_section(name, sizes, args.runs, args.rss_runs or args.runs)
        report["sections"][name], report["seconds"][name] = raw, seconds
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
