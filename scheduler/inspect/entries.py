"""Stream entries as the inspectors read them: ranges with text ids, and task payloads described.

``describe_payload`` says what a payload is (task id, action, retry) or why it cannot say (``problem``),
never returning the payload itself; ``decode_or_none`` is the same question for a caller that only
wants a valid message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import redis

from scheduler.errors import InvalidMessageError
from scheduler.taskqueue import keys
from scheduler.taskqueue._redis import text
from scheduler.taskqueue.message import TaskMessage, decode

Entry = tuple[str, dict[bytes, bytes]]


@dataclass(frozen=True)
class Payload:
    """What a task payload says; all None with ``problem`` set when it says nothing usable."""

    task_id: int | None
    action: str | None
    retry: int | None
    problem: str | None


def describe_payload(raw: bytes | None, max_entry_bytes: int, missing: str) -> Payload:
    """``missing`` is the problem reported when there is no payload at all (trimmed, no field)."""
    if raw is None:
        return Payload(None, None, None, missing)
    try:
        msg = decode(raw, max_entry_bytes)
    except InvalidMessageError as exc:
        return Payload(None, None, None, f"invalid: {exc.reason}")
    return Payload(msg.task_id, msg.action, msg.retry, None)


def decode_or_none(
    payload: bytes | str | None, max_entry_bytes: int = keys.DEFAULT_MAX_ENTRY_BYTES
) -> TaskMessage | None:
    try:
        return decode(payload, max_entry_bytes)
    except InvalidMessageError:
        return None


def read_range(client: redis.Redis, key: str, start: str, end: str, count: int | None = None) -> list[Entry]:
    """XRANGE with the ids as text and the fields as Redis returned them."""
    rows = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(key, start, end, count))
    return [(text(i), f) for i, f in rows]


def read_after(client: redis.Redis, key: str, after: str) -> list[tuple[str, dict[str, str]]]:
    """Every entry after ``after`` (exclusive), ids and fields as text: a reader tailing a stream
    passes the last id it saw."""
    return [
        (i, {text(k): text(v) for k, v in fields.items()})
        for i, fields in read_range(client, key, f"({after}", "+")
    ]
