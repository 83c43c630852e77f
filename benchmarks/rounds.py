"""Several rounds, one figure: each queue runs once per round (the order reversed every other round), so
a drift in the shared machine's load lands on every queue instead of on whichever ran at the bad moment."""

from __future__ import annotations

from dataclasses import replace

from benchmarks.runner import Baseline, Result


def _weighted(pairs: list[tuple[float, int]]) -> float:
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else 0.0


def merge(rounds: list[Result]) -> Result:
    """Counts and times add up (so rates are time-weighted), per-task costs are weighted by their tasks,
    latency samples are pooled, memory peaks take the largest."""
    first = rounds[0]
    cpu = [r for r in rounds if r.cpu_tasks]
    phases = {r.cpu_phase for r in cpu}
    return replace(
        first,
        note="; ".join(dict.fromkeys(r.note for r in rounds if r.note)),
        error="; ".join(dict.fromkeys(r.error for r in rounds if r.error)),
        tasks=sum(r.tasks for r in rounds),
        done=sum(r.done for r in rounds),
        seconds=sum(r.seconds for r in rounds),
        enqueue_s=sum(r.enqueue_s for r in rounds),
        drain_done=sum(r.drain_done for r in rounds),
        drain_s=sum(r.drain_s for r in rounds),
        cpu_ms=_weighted([(r.cpu_ms, r.cpu_tasks) for r in cpu]),
        cpu_phase="drain" if phases == {"drain"} else ("e2e" if phases else ""),
        cpu_tasks=sum(r.cpu_tasks for r in cpu),
        redis_cpu_ms=_weighted([(r.redis_cpu_ms, r.cpu_tasks) for r in cpu]),
        latencies_ms=sorted(x for r in rounds for x in r.latencies_ms),
        submitted=sum(r.submitted for r in rounds),
        lat_cpu_ms=_weighted([(r.lat_cpu_ms, len(r.latencies_ms)) for r in rounds]),
        rss_sum=max(r.rss_sum for r in rounds),
        rss_max=max(r.rss_max for r in rounds),
        pss_peak=max(r.pss_peak for r in rounds),
        processes=max(r.processes for r in rounds),
        load=[x for r in rounds for x in r.load],
        per_round=[x for r in rounds for x in r.per_round],
    )


def merge_baselines(rounds: list[Baseline]) -> Baseline:
    ok = [b for b in rounds if not b.error]
    if not ok:
        return rounds[0]
    return replace(
        ok[0],
        calls=sum(b.calls for b in ok),
        seconds=sum(b.seconds for b in ok),
        cpu_ms=_weighted([(b.cpu_ms, b.calls) for b in ok]),
        rss=max(b.rss for b in ok),
    )
