"""Each task's last crawl and next run, as the Go API and ``task show`` read them.

``task:crawl_status:<id>`` and ``task:crawl_message:<id>`` are written after every crawl (24 h TTL, the
Go original's keys); the schedule set's score is the next periodic run in ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from scheduler.taskqueue import keys
from scheduler.taskqueue._redis import text


@dataclass(frozen=True)
class TaskState:
    task_id: int
    status: str | None  # success, no_items, failed; None before the first crawl (or after its TTL)
    message: str | None  # the last crawl's message (the error of a failed one)
    next_run_ms: float | None  # Unix ms of the next periodic run; None when not scheduled


def task_states(client: redis.Redis, stream: str, task_ids: list[int]) -> dict[int, TaskState]:
    """The state of each of ``task_ids``, in one round-trip."""
    if not task_ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for i in task_ids:  # GETs, not MGET: the Go status keys of two tasks need not share a cluster slot
        pipe.get(keys.crawl_status_key(i))
        pipe.get(keys.crawl_message_key(i))
    pipe.zmscore(keys.schedule_set(stream), [str(i) for i in task_ids])
    *replies, next_ms = pipe.execute()
    statuses, messages = replies[0::2], replies[1::2]
    return {
        i: TaskState(
            i,
            text(status) if status else None,
            _lenient(message) if message else None,
            due,
        )
        for i, status, message, due in zip(task_ids, statuses, messages, next_ms, strict=True)
    }


def _lenient(value: bytes | str) -> str:
    """A crawl message quotes the crawler's error text: a bad byte in it must not hide the rest."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
