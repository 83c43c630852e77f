"""Entries delivered to a consumer and not yet acknowledged: XPENDING, read and decoded.

A missing group is an empty answer here, never created: inspecting must not change what it looks at
(``Consumer.pending_summary`` is the daemon's side, which recreates the group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis

from scheduler.inspect.entries import Payload, describe_payload
from scheduler.taskqueue import PendingSummary, keys
from scheduler.taskqueue._redis import text


def no_group(exc: redis.ResponseError) -> bool:
    """The stream or its group does not exist (yet, or any more): an empty answer, not an error."""
    return "NOGROUP" in str(exc) or "no such key" in str(exc)


def pending_summary(client: redis.Redis, stream: str, group: str) -> PendingSummary | None:
    """XPENDING's summary (count, oldest and newest id, per-consumer counts); None without the group."""
    try:
        return PendingSummary.from_reply(client.xpending(stream, group))
    except redis.ResponseError as exc:
        if no_group(exc):
            return None
        raise


@dataclass(frozen=True)
class PendingEntry:
    id: str
    consumer: str
    idle_s: float  # since its last delivery
    deliveries: int
    payload: Payload  # "trimmed" when the entry is gone from the stream


@dataclass(frozen=True)
class PendingEntries:
    total: int  # every pending entry of the group; ``entries`` holds the oldest of them
    entries: list[PendingEntry]


def pending_entries(
    client: redis.Redis,
    stream: str,
    group: str,
    count: int,
    max_entry_bytes: int = keys.DEFAULT_MAX_ENTRY_BYTES,
) -> PendingEntries:
    """The oldest ``count`` pending entries of ``group``, each with what its payload says."""
    summary = pending_summary(client, stream, group)
    total = summary.count if summary else 0
    try:
        rows = cast(
            list[dict[str, Any]], client.xpending_range(stream, group, "-", "+", count) if total else []
        )
    except redis.ResponseError as exc:
        if not no_group(exc):  # the group vanished between the two commands
            raise
        total, rows = 0, []
    pipe = client.pipeline(transaction=False)
    for row in rows:
        pipe.xrange(stream, row["message_id"], row["message_id"])
    out = []
    for row, found in zip(rows, pipe.execute() if rows else [], strict=True):
        data = found[0][1].get(keys.DATA_FIELD.encode()) if found else None
        out.append(
            PendingEntry(
                text(row["message_id"]), text(row["consumer"]), row["time_since_delivered"] / 1000,
                row["times_delivered"], describe_payload(data, max_entry_bytes, "trimmed"),
            )
        )  # fmt: skip
    return PendingEntries(total, out)
