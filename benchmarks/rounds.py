"""Several runs, one figure: each queue runs once per run (the order reversed every other run), so a drift
in the shared machine's load lands on every queue instead of on whichever ran at the bad moment. The
headline figure is the median of the runs' figures, shown with every run's value so the spread is seen;
the pooled figures (total tasks / total time, latency samples pooled) are kept for the JSON and the plot.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from benchmarks.runner import Baseline, Options, Paced, Result, run_baseline, run_queue

GRPC_MODES = ("sync", "aio")


@dataclass
class Figure:
    """One figure over the runs: the median, and every run's value in run order (nan: not measured)."""

    runs: list[float]

    @property
    def median(self) -> float:
        ok = [x for x in self.runs if x == x]
        return statistics.median(ok) if ok else float("nan")


@dataclass
class Suite:
    """Every run of every queue at one concurrency, and the gRPC-only loops of each run."""

    concurrency: int
    names: list[str]
    runs: dict[str, list[Result]] = field(default_factory=dict)  # queue → one Result per run
    baselines: dict[str, list[Baseline]] = field(default_factory=dict)  # mode → one per run

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "runs": {name: [asdict(r) for r in rs] for name, rs in self.runs.items()},
            "baselines": {mode: [asdict(b) for b in bs] for mode, bs in self.baselines.items()},
            "medians": {name: medians(rs) for name, rs in self.runs.items()},
            "baseline_medians": {
                mode: {"calls_per_s": _json(grpc_throughput(bs)), "cpu_ms": _json(grpc_cpu(bs))}
                for mode, bs in self.baselines.items()
            },
            "pooled": {name: _pooled_json(merge(rs)) for name, rs in self.runs.items()},
        }


Progress = Callable[[str], None]


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_suite(
    names: list[str], opts: Options, runs: int, where: str = "", progress: Progress = stderr_progress
) -> Suite:
    """``runs`` runs of every queue, alternating the order; one progress line per queue per run, saying
    where in the whole invocation it is (``where``: e.g. "concurrency 16 (2/2)")."""
    suite = Suite(opts.concurrency, names, {n: [] for n in names}, {m: [] for m in GRPC_MODES})
    for k in range(runs):
        at = f"run {k + 1}/{runs}" + (f", {where}" if where else "")
        for mode in GRPC_MODES:
            suite.baselines[mode].append(base := run_baseline(mode, opts))
            status = base.error or f"{base.throughput:.0f} calls/s, {base.cpu_ms:.3f} ms CPU/call"
            progress(f"  {at}, gRPC-only {mode:5} {status}")
        for name in names if k % 2 == 0 else names[::-1]:
            progress(f"  {at}, {name} ...")
            t0 = time.monotonic()
            suite.runs[name].append(result := run_queue(name, opts))
            progress(f"  {at}, {name:11} {status_line(result)} ({time.monotonic() - t0:.0f} s)")
    return suite


def status_line(result: Result) -> str:
    if result.error and not result.done:
        return f"FAILED: {result.error}"
    lat = " ".join(f"p50@{p.rate:.0f} {_p(p.latencies_ms, 0.5):.1f} ms" for p in result.paced)
    return (
        f"{result.throughput:.0f} tasks/s e2e, {result.drain:.0f} drain, {result.cpu_ms:.3f} ms CPU/task, "
        f"{lat or 'no latency'}, load {result.load[0]:.1f}" + (f" [{result.error}]" if result.error else "")
    )


# -- per-run figures and their medians ----------------------------------------------------------------------


def _p(values: list[float], q: float) -> float:
    """The q-quantile of sorted ``values`` (nearest rank), nan for none."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def _nan_if_zero(value: float) -> float:
    return value if value else float("nan")


def e2e(rs: list[Result]) -> Figure:
    return Figure([_nan_if_zero(r.throughput) for r in rs])


def drain(rs: list[Result]) -> Figure:
    return Figure([_nan_if_zero(r.drain) for r in rs])


def cpu(rs: list[Result]) -> Figure:
    return Figure([r.cpu_ms if r.cpu_tasks else float("nan") for r in rs])


def redis_cpu(rs: list[Result]) -> Figure:
    return Figure([r.redis_cpu_ms if r.cpu_tasks else float("nan") for r in rs])


def latency(rs: list[Result], rate: float, q: float) -> Figure:
    """The q-quantile of each run's latencies at ``rate`` (q = 1: the run's maximum)."""
    return Figure([_p(p.latencies_ms, q) if (p := r.at(rate)) else float("nan") for r in rs])


def paced_cpu(rs: list[Result], rate: float) -> Figure:
    return Figure([p.cpu_ms if (p := r.at(rate)) else float("nan") for r in rs])


def grpc_throughput(bs: list[Baseline]) -> Figure:
    return Figure([b.throughput if not b.error else float("nan") for b in bs])


def grpc_cpu(bs: list[Baseline]) -> Figure:
    return Figure([b.cpu_ms if not b.error else float("nan") for b in bs])


def rates(rs: list[Result]) -> list[float]:
    return sorted({p.rate for r in rs for p in r.paced})


def _json(fig: Figure) -> dict[str, Any]:
    return {"median": fig.median, "runs": fig.runs}


def medians(rs: list[Result]) -> dict[str, Any]:
    """The headline figures of one queue, for the JSON: median and per-run values of each."""
    out: dict[str, Any] = {
        "e2e_tasks_per_s": _json(e2e(rs)),
        "drain_tasks_per_s": _json(drain(rs)),
        "cpu_ms_per_task": _json(cpu(rs)),
        "redis_cpu_ms_per_task": _json(redis_cpu(rs)),
        "latency_ms": {},
    }
    for rate in rates(rs):
        out["latency_ms"][str(rate)] = {
            "p50": _json(latency(rs, rate, 0.5)),
            "p95": _json(latency(rs, rate, 0.95)),
            "p99": _json(latency(rs, rate, 0.99)),
            "max": _json(latency(rs, rate, 1.0)),
            "cpu_ms_per_task": _json(paced_cpu(rs, rate)),
        }
    return out


# -- pooled over the runs ------------------------------------------------------------------------------------


def _weighted(pairs: list[tuple[float, int]]) -> float:
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else 0.0


def pooled_latencies(rs: list[Result], rate: float) -> list[float]:
    return sorted(x for r in rs if (p := r.at(rate)) for x in p.latencies_ms)


def merge(runs: list[Result]) -> Result:
    """Counts and times add up (so rates are time-weighted), per-task costs are weighted by their tasks,
    latency samples are pooled per rate, memory peaks take the largest."""
    first = runs[0]
    with_cpu = [r for r in runs if r.cpu_tasks]
    phases = {r.cpu_phase for r in with_cpu}
    paced = []
    for rate in rates(runs):
        at = [p for r in runs if (p := r.at(rate))]
        paced.append(
            Paced(
                rate,
                submitted=sum(p.submitted for p in at),
                latencies_ms=pooled_latencies(runs, rate),
                cpu_ms=_weighted([(p.cpu_ms, len(p.latencies_ms)) for p in at]),
            )
        )
    return replace(
        first,
        note="; ".join(dict.fromkeys(r.note for r in runs if r.note)),
        error="; ".join(dict.fromkeys(r.error for r in runs if r.error)),
        tasks=sum(r.tasks for r in runs),
        done=sum(r.done for r in runs),
        seconds=sum(r.seconds for r in runs),
        enqueue_s=sum(r.enqueue_s for r in runs),
        drain_done=sum(r.drain_done for r in runs),
        drain_s=sum(r.drain_s for r in runs),
        cpu_ms=_weighted([(r.cpu_ms, r.cpu_tasks) for r in with_cpu]),
        cpu_phase="drain" if phases == {"drain"} else ("e2e" if phases else ""),
        cpu_tasks=sum(r.cpu_tasks for r in with_cpu),
        redis_cpu_ms=_weighted([(r.redis_cpu_ms, r.cpu_tasks) for r in with_cpu]),
        paced=paced,
        rss_sum=max(r.rss_sum for r in runs),
        rss_max=max(r.rss_max for r in runs),
        pss_peak=max(r.pss_peak for r in runs),
        processes=max(r.processes for r in runs),
        load=[x for r in runs for x in r.load],
        per_round=[x for r in runs for x in r.per_round],
    )


def _pooled_json(r: Result) -> dict[str, Any]:
    """The pooled figures without the pooled samples (every run's samples are in "runs" already)."""
    return {
        "e2e_tasks_per_s": r.throughput,
        "drain_tasks_per_s": r.drain,
        "cpu_ms_per_task": r.cpu_ms,
        "latency_ms": {
            str(p.rate): {
                "p50": _p(p.latencies_ms, 0.5),
                "p95": _p(p.latencies_ms, 0.95),
                "p99": _p(p.latencies_ms, 0.99),
                "max": _p(p.latencies_ms, 1.0),
                "done": len(p.latencies_ms),
                "submitted": p.submitted,
            }
            for p in r.paced
        },
    }
