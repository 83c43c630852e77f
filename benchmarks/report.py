"""The printed report: what ran where, then three tables with every figure as a ratio to ours."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from benchmarks.runner import Baseline, Options, Result

PACKAGES = [
    "goodshunter-scheduler", "celery", "kombu", "dramatiq", "taskiq", "taskiq-redis", "saq", "arq", "rq",
    "redis", "hiredis", "grpcio", "protobuf",
]  # fmt: skip


def environment(repo: Path) -> list[str]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    server = _run(["redis-server", "--version"]).split(" sha=")[0]
    commit = _run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"]) or "? (not a git checkout)"
    status = _run(["git", "-C", str(repo), "status", "--porcelain", "--", "scheduler", "crawler_stub"])
    dirty = " (+ uncommitted changes to scheduler/ or crawler_stub/)" if status else ""
    return [
        f"machine: {_cpus()} CPUs ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {server}",
        f"code: commit {commit}{dirty}",
        "versions: " + ", ".join(versions),
    ]


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "?"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def ratio(value: float, ours: float | None) -> str:
    if not ours or value != value or ours != ours or value <= 0:
        return "-"
    return f"{value / ours:.2f}x"


def f(value: float, digits: int = 2) -> str:
    return "-" if value != value or value == 0 else f"{value:.{digits}f}"


def render(
    results: list[Result], baselines: dict[str, Baseline], opts: Options, rounds: int = 1
) -> list[str]:
    ours = next((r for r in results if r.name == "ours" and r.done), None)
    ok = [r for r in results if r.done]
    out = [f"{rounds} round(s), every queue once per round, the order reversed every other round; figures "
           "over all rounds (rates: total tasks / total time; per-task costs: weighted; latency: pooled)"]  # fmt: skip
    out += (
        _throughput(ok, ours, baselines, opts) + _latency(ok, ours, opts) + _cost(ok, ours, baselines, opts)
    )
    out += ["", "Configurations:"]
    for r in results:
        out.append(f"  {r.name:10} {r.config or '-'} [gRPC {r.grpc}]")
    notes = [f"  {r.name}: {r.note}" for r in results if r.note]
    errors = [f"  {r.name}: {r.error}" for r in results if r.error]
    if notes:
        out += ["Notes:", *notes]
    if errors:
        out += ["FAILED or incomplete:", *errors]
    return out


def _throughput(
    ok: list[Result], ours: Result | None, baselines: dict[str, Baseline], opts: Options
) -> list[str]:
    out = [
        "",
        f"Throughput: {opts.tasks} tasks, concurrency {opts.concurrency}. end-to-end: enqueued at once while the "
        "worker runs, first enqueue -> last completion; drain: enqueued while the worker is paused (SIGSTOP), "
        "resume -> last completion (x ours = figure / ours's figure; load: 1-minute load average as each "
        "round of that queue started)",
    ]
    rows = []
    for r in ok:
        rows.append([
            r.name, f"{r.throughput:.0f}", ratio(r.throughput, ours.throughput if ours else None),
            f"{r.seconds:.2f}", f"{r.enqueue_s:.2f}", f"{r.done}/{r.tasks}",
            f(r.drain, 0), ratio(r.drain, ours.drain if ours else None), f(r.drain_s),
            " ".join(f"{e:.0f}:{d:.0f}" for e, d in r.per_round), " ".join(f"{x:.1f}" for x in r.load),
        ])  # fmt: skip
    header = ["queue", "e2e tasks/s", "x ours", "seconds", "enqueue s", "done", "drain tasks/s", "x ours",
              "seconds", "per round e2e:drain", "load"]  # fmt: skip
    out += table(header, rows)
    for mode, base in baselines.items():
        if not base.error:
            out.append(f"  (gRPC calls alone, {mode}: {base.throughput:.0f} calls/s)")
    return out


def _latency(ok: list[Result], ours: Result | None, opts: Options) -> list[str]:
    out = ["", f"Latency: submit -> done, one task every {1000 / opts.rate:.0f} ms ({opts.rate:.0f}/s) for "
           f"{opts.latency_s:.0f} s, milliseconds"]  # fmt: skip
    rows = []
    o = ours.latencies_ms if ours else []
    for r in ok:
        if not r.latencies_ms:
            continue
        lat = r.latencies_ms
        rows.append([r.name, f(pct(lat, 0.5), 3), f(pct(lat, 0.95), 3), f(pct(lat, 0.99), 3), f(lat[-1], 3),
                     ratio(pct(lat, 0.5), pct(o, 0.5)), ratio(pct(lat, 0.99), pct(o, 0.99)),
                     f"{len(lat)}/{r.submitted}"])  # fmt: skip
    return out + table(["queue", "p50", "p95", "p99", "max", "p50 x ours", "p99 x ours", "done"], rows)


def _cost(ok: list[Result], ours: Result | None, baselines: dict[str, Baseline], opts: Options) -> list[str]:
    out = ["", "Cost: CPU of the worker's process tree per task (drain phase; /proc utime+stime), its own "
           "part (minus the gRPC-only loop's CPU per call), Redis server CPU; memory: peak RSS of the largest process "
           "(VmHWM) and the sampled peak of the tree's summed PSS (shared pages split between processes)"]  # fmt: skip

    def grpc_ms(r: Result) -> float:
        base = baselines.get(r.grpc)
        return base.cpu_ms if base and not base.error else float("nan")

    rows = []
    for r in ok:
        mine = r.cpu_ms - grpc_ms(r)
        name = r.name + ("*" if r.cpu_phase == "e2e" else "")
        rows.append([name, f(r.cpu_ms, 3), f(grpc_ms(r), 3), f(mine, 3), f(mine / grpc_ms(r), 2) + "x",
                     ratio(mine, ours.cpu_ms - grpc_ms(ours) if ours else None), f(r.redis_cpu_ms, 3),
                     f(r.lat_cpu_ms, 3), f(r.rss_max, 1), f(r.pss_peak, 1), str(r.processes),
                     ratio(r.pss_peak, ours.pss_peak if ours else None)])  # fmt: skip
    out += table(["queue", "CPU ms/task", "gRPC ms", "own ms", "own/gRPC", "own x ours", "redis ms",
                  f"CPU ms @{opts.rate:.0f}/s", "RSS MiB", "PSS MiB", "procs", "PSS x ours"], rows)  # fmt: skip
    if any(r.cpu_phase == "e2e" for r in ok):
        out.append("  * CPU measured in the end-to-end phase (no drain phase: a backlog was left)")
    for mode, base in baselines.items():
        if not base.error:
            out.append(f"  (gRPC-only loop, {mode}: {base.cpu_ms:.3f} ms CPU/call, RSS {base.rss:.1f} MiB)")
        else:
            out.append(f"  (gRPC-only loop, {mode}: failed: {base.error})")
    return out
