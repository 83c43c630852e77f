"""The dead-letter stream ``<stream>:dlq``: entries that will not be retried, oldest first.

Each holds ``original_id``, ``payload`` (the task JSON, or the raw entry data for poison), ``reason``
and ``failed_at`` (CONTRACT §1). The reads a replay needs are here too; the replay itself is a write.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import redis

from scheduler.inspect.entries import Entry, Payload, describe_payload, read_range
from scheduler.taskqueue import keys
from scheduler.taskqueue._redis import text

BATCH = 100


@dataclass(frozen=True)
class DeadLetter:
    id: str
    original_id: str
    reason: str
    failed_at: str
    payload: Payload

    @property
    def replayable(self) -> bool:
        """Its payload is a valid task message, so a replay can enqueue it again."""
        return self.payload.problem is None


@dataclass(frozen=True)
class DeadLetters:
    total: int  # every dead letter; ``entries`` holds the oldest of them
    entries: list[DeadLetter]


def dead_letters(
    client: redis.Redis, stream: str, count: int, max_entry_bytes: int = keys.DEFAULT_MAX_ENTRY_BYTES
) -> DeadLetters:
    """The oldest ``count`` dead letters of ``stream``, each with what its payload says."""
    dlq = keys.dlq_stream(stream)
    total = int(client.xlen(dlq))
    out = []
    for entry, fields in read_range(client, dlq, "-", "+", count):
        field = {name: fields.get(name.encode(), b"").decode("utf-8", "replace")
                 for name in ("original_id", "reason", "failed_at")}  # fmt: skip
        payload = describe_payload(fields.get(b"payload"), max_entry_bytes, "no payload")
        out.append(DeadLetter(entry, field["original_id"], field["reason"], field["failed_at"], payload))
    return DeadLetters(total, out)


def named_dead_letters(
    client: redis.Redis, stream: str, ids: list[str]
) -> Iterator[tuple[str, dict[bytes, bytes] | None]]:
    """Each of ``ids`` once, with its fields (None: no such dead letter, or not any more)."""
    dlq = keys.dlq_stream(stream)
    for entry in dict.fromkeys(ids):  # the same id twice is one answer
        found = read_range(client, dlq, entry, entry)
        yield entry, (found[0][1] if found else None)


def every_dead_letter(client: redis.Redis, stream: str) -> Iterator[Entry]:
    """Every dead letter present when the iteration starts, read in batches. The bound matters: a
    replayed task that fails again at once lands back in the dead-letter stream, and must not be met
    again by the same pass."""
    dlq = keys.dlq_stream(stream)
    last = cast(list[tuple[bytes, Any]], client.xrevrange(dlq, "+", "-", count=1))
    if not last:
        return
    start, end = "-", text(last[0][0])
    while batch := read_range(client, dlq, start, end, BATCH):
        yield from batch
        start = "(" + batch[-1][0]  # exclusive: entries left in place are not read twice
