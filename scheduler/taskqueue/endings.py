"""Every way an entry ends, as values, written by one script call (``end.lua``) per batch.

An ``Ending`` says what to write for one entry: a success (results, seen items, status keys), a retry
(a new entry or a parked one, the run lock handed over), a dead letter, or a plain acknowledgement. Each
is applied only while this consumer still holds the entry, with the run lock's release, the Go status keys
and the XACK in the same atomic step; sent twice (a lost reply), an ending gives the same answer and
writes nothing more. No other code path acknowledges an entry of the daemon.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from scheduler.taskqueue import keys
from scheduler.taskqueue._redis import connection_errors, text
from scheduler.taskqueue.scripts import Scripts

Kind = Literal["ok", "retry", "dead", "ack"]
NOT_HELD = "not_held"  # the answer for an entry this consumer no longer holds: nothing was written
DEFAULT_RECEIPT_TTL_MS = 300_000
DEFAULT_SEEN_ITEMS_PER_TASK = 2000
DEFAULT_SEEN_TTL_MS = 7 * 86_400_000
DEFAULT_LOCK_TTL_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Ending:
    entry_id: str
    task_id: int  # 0 when the entry's task is unknown (an unreadable payload)
    kind: Kind
    args: tuple[str | int | bytes, ...] = ()  # bytes: a poison payload kept as it was


def succeeded(
    entry_id: str,
    task_id: int,
    *,
    status: str,
    total_found: int,
    crawled_at: str,
    items_json: str,
    started_ms: int,
    source_ids: Sequence[str],
) -> Ending:
    """``started_ms``: when the crawl started, on Redis' clock (later requests made before it are then
    already satisfied)."""
    return Ending(
        entry_id, task_id, "ok", (status, total_found, crawled_at, items_json, started_ms, *source_ids)
    )


def retried(entry_id: str, task_id: int, payload: str, delay_ms: int, error_text: str) -> Ending:
    return Ending(entry_id, task_id, "retry", (payload, max(0, delay_ms), error_text))


def dead_lettered(
    entry_id: str, task_id: int, payload: bytes | str, reason: str, failed_at: str, error_text: str = ""
) -> Ending:
    """``error_text`` '' writes no status keys (no task to write them for)."""
    return Ending(entry_id, task_id, "dead", (payload, reason[:500], failed_at, error_text[:1000]))


def acked(entry_id: str, task_id: int) -> Ending:
    return Ending(entry_id, task_id, "ack")


@dataclass(frozen=True, slots=True)
class Limits:
    receipt_ttl_ms: int = DEFAULT_RECEIPT_TTL_MS
    seen_ttl_ms: int = DEFAULT_SEEN_TTL_MS
    seen_items_per_task: int = DEFAULT_SEEN_ITEMS_PER_TASK
    results_maxlen: int = keys.DEFAULT_RESULTS_MAXLEN
    dlq_maxlen: int = keys.DEFAULT_DLQ_MAXLEN
    lock_ttl_ms: int = DEFAULT_LOCK_TTL_MS


class Ender:
    """Applies endings for one consumer of one stream and group."""

    def __init__(self, scripts: Scripts, stream: str, group: str, consumer: str, limits: Limits) -> None:
        self.scripts = scripts
        self.stream = stream
        self.limits = limits
        self._fixed_keys = [
            stream,
            keys.results_stream(stream),
            keys.last_success_hash(stream),
            keys.delayed_set(stream),
            keys.dlq_stream(stream),
        ]
        self._fixed_args: list[str | int] = [
            group,
            consumer,
            limits.receipt_ttl_ms,
            limits.seen_ttl_ms,
            limits.results_maxlen,
            keys.STATUS_TTL_SECONDS,
            limits.dlq_maxlen,
            limits.seen_items_per_task,
            keys.receipt_prefix(stream),
            limits.lock_ttl_ms,
        ]

    def end(self, endings: Sequence[Ending]) -> list[str]:
        """One answer per ending: 'ok:<new items>', 'retry', 'dead', 'ack' or ``NOT_HELD``."""
        if not endings:
            return []
        keys_ = list(self._fixed_keys)
        args: list[str | int | bytes] = list(self._fixed_args)
        for e in endings:
            keys_ += [
                keys.run_lock_key(self.stream, e.task_id),
                keys.crawl_status_key(e.task_id),
                keys.crawl_message_key(e.task_id),
                keys.seen_items_key(self.stream, e.task_id),
            ]
            args += [e.kind, e.entry_id, e.task_id, len(e.args), *e.args]
        with connection_errors(f"end {len(endings)} entries"):
            answers = self.scripts.run("end", keys_, args)
        return [text(a) for a in answers]
