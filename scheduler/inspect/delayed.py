"""The delayed-retry set: retries parked until their back-off is over.

Each member is ``<entry id>|<payload>`` (the id of the entry the retry ended, then the task JSON to
enqueue), scored by its due time in ms; ``move_due.lua`` writes and moves them, and this is the one
place Python reads them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import redis

from scheduler.taskqueue import keys
from scheduler.taskqueue._redis import text


@dataclass(frozen=True)
class DelayedRetry:
    entry_id: str  # the entry whose failure parked this retry
    payload: str  # the task message to enqueue when due
    due_ms: float


def parse_member(member: bytes | str) -> tuple[str, str]:
    """``<entry id>|<payload>`` → (entry id, payload); a member without ``|`` is all id."""
    entry_id, _, payload = text(member).partition("|")
    return entry_id, payload


def delayed_retries(client: redis.Redis, stream: str) -> list[DelayedRetry]:
    """Every parked retry of ``stream``, soonest due first."""
    rows = cast(list[tuple[bytes, float]], client.zrange(keys.delayed_set(stream), 0, -1, withscores=True))
    return [DelayedRetry(*parse_member(member), due_ms=score) for member, score in rows]
