"""The printed report: what ran where, then per concurrency three tables (throughput, latency per rate,
cost); each figure the median of the runs with every run's value beside it, and its ratio to ours."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from benchmarks import rounds as r_
from benchmarks.rounds import Figure, Suite
from benchmarks.runner import Options, Result

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


def commit(repo: Path) -> str:
    """The full commit of the tree the harness runs from, for the JSON ("" outside a git checkout)."""
    return _run(["git", "-C", str(repo), "rev-parse", "HEAD"])


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


def num(value: float) -> str:
    """Three significant figures or so, whatever the magnitude: 1040, 98.1, 3.19, 0.412."""
    if value != value:
        return "-"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2 if abs(value) >= 1 else 3
    return f"{value:.{digits}f}"


def fig(figure: Figure) -> str:
    """The median, then every run's value in run order when there is more than one run."""
    if len(figure.runs) < 2:
        return num(figure.median)
    return f"{num(figure.median)} ({' '.join(num(x) for x in figure.runs)})"


def render(suite: Suite, opts: Options, runs: int) -> list[str]:
    """The three tables of one concurrency; ratios are medians over ours's medians."""
    ok = {name: rs for name, rs in suite.runs.items() if any(r.done for r in rs)}
    ours = ok.get("ours")
    out = [
        "",
        f"=== concurrency {suite.concurrency}: {runs} run(s), every queue once per run, the order reversed "
        "every other run; each figure the median of the runs' figures (every run's value in parentheses, "
        "in run order); x ours = median / ours's median",
    ]
    out += _throughput(ok, ours, suite, opts)
    for rate in opts.rates:
        out += _latency(ok, ours, rate, opts)
    out += _cost(ok, ours, suite, opts)
    return out


def footer(suites: list[Suite]) -> list[str]:
    """Configurations (at each concurrency), notes and failures, once for the whole invocation."""
    out = ["", "Configurations:"]
    notes, errors = [], []
    for suite in suites:
        for name, rs in suite.runs.items():
            out.append(f"  c{suite.concurrency:<3} {name:11} {rs[0].config or '-'} [gRPC {rs[0].grpc}]")
            merged = r_.merge(rs)
            if merged.note:
                notes.append(f"  c{suite.concurrency} {name}: {merged.note}")
            if merged.error:
                errors.append(f"  c{suite.concurrency} {name}: {merged.error}")
    if notes:
        out += ["Notes:", *notes]
    if errors:
        out += ["FAILED or incomplete:", *errors]
    return out


def _ratio(value: Figure, ours: Figure | None) -> str:
    return ratio(value.median, ours.median if ours else None)


def _throughput(
    ok: dict[str, list[Result]], ours: list[Result] | None, suite: Suite, opts: Options
) -> list[str]:
    out = [
        "",
        f"Throughput: {opts.tasks} tasks per phase per run, concurrency {suite.concurrency}. drain: enqueued "
        "while the worker's process tree is paused (SIGSTOP), resume -> last completion; end-to-end: enqueued "
        "at once while the worker runs, first enqueue -> last completion (load: 1-minute load average as "
        "each run of that queue started)",
    ]
    rows = []
    for name, rs in ok.items():
        done, tasks = sum(r.done for r in rs), sum(r.tasks for r in rs)
        rows.append([
            name, fig(r_.drain(rs)), _ratio(r_.drain(rs), r_.drain(ours) if ours else None),
            fig(r_.e2e(rs)), _ratio(r_.e2e(rs), r_.e2e(ours) if ours else None),
            f"{done}/{tasks}", " ".join(f"{x:.1f}" for r in rs for x in r.load),
        ])  # fmt: skip
    out += table(["queue", "drain tasks/s", "x ours", "e2e tasks/s", "x ours", "done", "load"], rows)
    for mode, bases in suite.baselines.items():
        out.append(f"  (gRPC calls alone, {mode}: {fig(r_.grpc_throughput(bases))} calls/s)")
    return out


def _latency(ok: dict[str, list[Result]], ours: list[Result] | None, rate: float, opts: Options) -> list[str]:
    out = ["", f"Latency at {rate:.0f}/s: submit -> done, one task every {1000 / rate:g} ms for "
           f"{opts.latency_s:g} s per run, milliseconds (p95 and max: medians only)"]  # fmt: skip
    rows = []
    for name, rs in ok.items():
        submitted = sum(p.submitted for r in rs if (p := r.at(rate)))
        if not submitted:
            continue
        done = sum(len(p.latencies_ms) for r in rs if (p := r.at(rate)))
        p50, p99 = r_.latency(rs, rate, 0.5), r_.latency(rs, rate, 0.99)
        o50, o99 = (r_.latency(ours, rate, 0.5), r_.latency(ours, rate, 0.99)) if ours else (None, None)
        rows.append([name, fig(p50), num(r_.latency(rs, rate, 0.95).median), fig(p99),
                     num(r_.latency(rs, rate, 1.0).median), _ratio(p50, o50), _ratio(p99, o99),
                     f"{done}/{submitted}"])  # fmt: skip
    if not rows:
        return [*out, "  (no queue was measured at this rate)"]
    return out + table(["queue", "p50", "p95", "p99", "max", "p50 x ours", "p99 x ours", "done"], rows)


def _cost(ok: dict[str, list[Result]], ours: list[Result] | None, suite: Suite, opts: Options) -> list[str]:
    out = ["", "Cost: CPU of the worker's whole process tree per task (drain phase; /proc utime+stime, reaped "
           "children included), its own part (minus the gRPC-only loop's median CPU per call), Redis server "
           "CPU, the tree's CPU per task at each paced rate (idle wake-ups included); memory (largest over the "
           "runs): peak RSS of the largest process (VmHWM) and the sampled peak of the tree's summed PSS"]  # fmt: skip

    def grpc_ms(rs: list[Result]) -> float:
        return r_.grpc_cpu(suite.baselines.get(rs[0].grpc, [])).median

    rows = []
    ours_own = r_.cpu(ours).median - grpc_ms(ours) if ours else None
    for name, rs in ok.items():
        merged = r_.merge(rs)
        own = r_.cpu(rs).median - grpc_ms(rs)
        star = "*" if merged.cpu_phase == "e2e" else ""
        rows.append([name + star, fig(r_.cpu(rs)), _ratio(r_.cpu(rs), r_.cpu(ours) if ours else None),
                     num(grpc_ms(rs)), num(own), ratio(own, ours_own), num(r_.redis_cpu(rs).median),
                     *(num(r_.paced_cpu(rs, rate).median) for rate in opts.rates),
                     f(merged.rss_max, 1), f(merged.pss_peak, 1), str(merged.processes),
                     ratio(merged.pss_peak, r_.merge(ours).pss_peak if ours else None)])  # fmt: skip
    out += table(["queue", "CPU ms/task", "x ours", "gRPC ms", "own ms", "own x ours", "redis ms",
                  *(f"CPU ms @{rate:.0f}/s" for rate in opts.rates), "RSS MiB", "PSS MiB", "procs",
                  "PSS x ours"], rows)  # fmt: skip
    if any(r_.merge(rs).cpu_phase == "e2e" for rs in ok.values()):
        out.append(
            "  * CPU measured in the end-to-end phase in some run (no drain phase: a backlog was left)"
        )
    for mode, bases in suite.baselines.items():
        errors = [b.error for b in bases if b.error]
        rss = max((b.rss for b in bases if not b.error), default=0.0)
        line = f"  (gRPC-only loop, {mode}: {fig(r_.grpc_cpu(bases))} ms CPU/call, RSS {rss:.1f} MiB"
        out.append(line + (f"; failed: {errors[0]})" if errors else ")"))
    return out
