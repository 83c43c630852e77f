"""The queue as a whole: the gauges every daemon exports, and the fuller view ``stats`` shows.

Both count the same things (stream length, pending, lag, delayed retries, dead letters); ``queue_gauges``
is one round-trip that tolerates a missing stream or group, ``queue_stats`` adds the oldest pending
entry's age (by Redis' clock), consumers, schedule, results and live daemons.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import redis

from scheduler.inspect.daemons import Heartbeat, live_daemons
from scheduler.inspect.pending import no_group, pending_summary
from scheduler.taskqueue import keys
from scheduler.taskqueue._redis import text

LAG_COUNT_CAP = 100_000  # counting past this is slow and tells an operator nothing more


def find_group(groups: Any, group: str) -> dict[Any, Any] | None:
    """``group``'s row of an XINFO GROUPS reply (None when absent, or when the reply is an error)."""
    if not isinstance(groups, list):
        return None
    return next((g for g in groups if text(g.get("name", b"")) == group), None)


@dataclass(frozen=True)
class QueueGauges:
    """None: that count could not be read this time (the gauge keeps its last value)."""

    length: int | None  # XLEN of the stream
    pending: int | None  # delivered, not acknowledged (0 without a group)
    lag: int | None  # not yet delivered (the whole stream without a group; None when Redis cannot say)
    delayed: int | None  # retries waiting for their back-off
    dead_letters: int | None


def queue_gauges(client: redis.Redis, stream: str, group: str) -> QueueGauges:
    pipe = client.pipeline(transaction=False)
    pipe.xlen(stream)
    pipe.xinfo_groups(stream)
    pipe.zcard(keys.delayed_set(stream))
    pipe.xlen(keys.dlq_stream(stream))
    length, groups, delayed, dlq = pipe.execute(raise_on_error=False)  # a failed one is its exception
    length, delayed, dlq = (v if isinstance(v, int) else None for v in (length, delayed, dlq))
    info = find_group(groups, group)
    if info is None:  # no group (yet, or any more): nothing pending, all of the stream waiting
        pending, lag = 0, length
    else:
        pending = int(info.get("pending") or 0)
        lag = None if info.get("lag") is None else int(info["lag"])
    return QueueGauges(length, pending, lag, delayed, dlq)


@dataclass(frozen=True)
class ConsumerInfo:
    name: str
    pending: int
    idle_s: float


@dataclass(frozen=True)
class QueueStats:
    stream: str
    group: str
    stream_exists: bool
    group_exists: bool
    length: int
    pending: int
    lag: int | None  # None: no group, or Redis could not say
    last_delivered_id: str | None
    oldest_pending_id: str | None
    oldest_pending_age_s: float | None
    delayed_retries: int
    dead_letters: int
    results: int
    scheduled_tasks: int
    consumers: list[ConsumerInfo]
    daemons: list[Heartbeat]


def queue_stats(client: redis.Redis, stream: str, group: str) -> QueueStats:
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.exists(stream)
    pipe.xlen(stream)
    pipe.zcard(keys.delayed_set(stream))
    pipe.zcard(keys.schedule_set(stream))
    pipe.xlen(keys.dlq_stream(stream))
    pipe.xlen(keys.results_stream(stream))
    (secs, micros), exists, length, delayed, scheduled, dead, results = pipe.execute()
    now_ms = secs * 1000 + micros // 1000  # entry ids carry Redis' clock, so pending ages use it too
    base = QueueStats(
        stream=stream, group=group, stream_exists=bool(exists), group_exists=False, length=length,
        pending=0, lag=None, last_delivered_id=None, oldest_pending_id=None, oldest_pending_age_s=None,
        delayed_retries=delayed, dead_letters=dead, results=results, scheduled_tasks=scheduled,
        consumers=[], daemons=live_daemons(client, stream, group),
    )  # fmt: skip
    try:
        info = find_group(client.xinfo_groups(stream) if exists else [], group)
        summary = pending_summary(client, stream, group) if info is not None else None
        consumers = client.xinfo_consumers(stream, group) if summary is not None else []
    except redis.ResponseError as exc:  # the stream or group vanished between two commands
        if no_group(exc):
            return base
        raise
    if info is None or summary is None:
        return base
    oldest = summary.oldest_id
    lag = info.get("lag")
    if lag is None:  # Redis 6.2 has no lag; 7.x says nil after some deletions: count what is left
        lag = len(
            client.xrange(stream, f"({text(info['last-delivered-id'])}", "+", count=LAG_COUNT_CAP) or []
        )
    return replace(
        base, group_exists=True, pending=summary.count, lag=lag,
        last_delivered_id=text(info["last-delivered-id"]), oldest_pending_id=oldest,
        oldest_pending_age_s=max(0, now_ms - int(oldest.split("-")[0])) / 1000 if oldest else None,
        consumers=[ConsumerInfo(text(c["name"]), int(c["pending"]), int(c["idle"]) / 1000)
                   for c in consumers],
    )  # fmt: skip
