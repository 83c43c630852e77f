"""Consumer: reads the task stream through a consumer group, and ends entries (ack, requeue, dead-letter).

Every path that ends an entry other than a plain ack is one Lua script that acts only while this consumer
still holds the entry, writes its outcome, and acknowledges last: two workers racing to end the same entry
produce exactly one outcome, and a refused write leaves the entry pending rather than acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from scheduler.errors import InvalidMessageError
from scheduler.taskqueue import keys
from scheduler.taskqueue._redis import bytes_client, connection_errors, text
from scheduler.taskqueue.message import TaskMessage, decode, format_timestamp
from scheduler.taskqueue.scripts import Scripts

log = logging.getLogger(__name__)

Fields = dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """A valid task message as read from the stream: ``id`` is the entry id."""

    id: str
    message: TaskMessage
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class PendingSummary:
    count: int
    oldest_id: str | None
    newest_id: str | None
    consumers: dict[str, int]


class Consumer:
    """The Go ``taskqueue.Consumer``, plus the repair operations a long-running daemon needs."""

    def __init__(
        self,
        redis_client: redis.Redis,
        logger: logging.Logger | None = None,
        stream: str = keys.DEFAULT_STREAM,
        group: str = keys.DEFAULT_GROUP,
        consumer: str = "consumer-1",
        *,
        max_entry_bytes: int = keys.DEFAULT_MAX_ENTRY_BYTES,
        dlq_maxlen: int = keys.DEFAULT_DLQ_MAXLEN,
        max_deliveries: int | None = None,
        on_dead_letter: Callable[[str, str, bytes | str], None] | None = None,
    ) -> None:
        self.redis = bytes_client(redis_client)
        self.log = logger or log
        self.stream = stream
        self.group = group
        self.name = consumer
        self.dlq = keys.dlq_stream(stream)
        self.delayed = keys.delayed_set(stream)
        self.max_entry_bytes = max_entry_bytes
        self.dlq_maxlen = dlq_maxlen
        self.max_deliveries = max_deliveries
        self.on_dead_letter = on_dead_letter
        self.scripts = Scripts(self.redis)
        # Own pending entries are re-read from id "0" first, so a restart with the same name resumes them.
        self._pending_cursor: str | None = "0"
        self._reclaim_cursor = "0-0"
        self._group_ready = False

    # -- group ------------------------------------------------------------------------------------------

    def ensure_group(self) -> None:
        """XGROUP CREATE stream group 0 MKSTREAM; an existing group is fine."""
        with connection_errors(f"XGROUP CREATE {self.stream}"):
            try:
                self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
                self.log.info("consumer group created", extra={"stream": self.stream, "group": self.group})
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._group_ready = True

    def _with_group(self, call: Callable[[], Any], what: str) -> Any:
        """Run a group command, recreating the group once if it vanished (FLUSHALL, a new Redis)."""
        if not self._group_ready:
            self.ensure_group()
        with connection_errors(what):
            try:
                return call()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
        self.log.warning("consumer group missing; recreating it", extra={"stream": self.stream})
        self._pending_cursor = "0"
        self.ensure_group()
        with connection_errors(what):
            return call()

    # -- reading ----------------------------------------------------------------------------------------

    def read(self, count: int = 10, block_ms: int | None = 2000) -> list[StreamMessage]:
        """Up to ``count`` valid messages: first this consumer's own pending entries, then new ones.

        Poison entries are dead-lettered (once) and acknowledged here; they are never returned.
        """
        if self._pending_cursor is not None:
            cursor = self._pending_cursor
            entries = self._xreadgroup(cursor, count, None)
            if entries:
                self._pending_cursor = text(entries[-1][0])
                return self._accept(entries, resumed=True)
            self._pending_cursor = None
        return self._accept(self._xreadgroup(">", count, block_ms), resumed=False)

    @property
    def resuming(self) -> bool:
        """True while this consumer is still re-reading its own pending list."""
        return self._pending_cursor is not None

    def queue_read(self, pipe: Any, count: int) -> None:
        """Queue a non-blocking read of up to ``count`` new entries on a caller's pipeline (so a daemon can
        read its next batch in the round-trip that handles the current one); ``accept`` its reply."""
        pipe.xreadgroup(self.group, self.name, {self.stream: ">"}, count=count)

    def accept(self, reply: Any) -> list[StreamMessage]:
        """The valid messages of a queued read's reply; poison is dead-lettered as in ``read``."""
        return self._accept(self._entries(reply), resumed=False)

    def _xreadgroup(self, cursor: str, count: int, block_ms: int | None) -> list[tuple[bytes, Fields]]:
        reply = self._with_group(
            lambda: self.redis.xreadgroup(
                self.group, self.name, {self.stream: cursor}, count=count, block=block_ms
            ),
            f"XREADGROUP {self.stream}",
        )
        return self._entries(reply)

    @staticmethod
    def _entries(reply: Any) -> list[tuple[bytes, Fields]]:
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            return [entry for batch in reply.values() for entry in batch[0]]
        return list(reply[0][1])

    def _accept(self, entries: Sequence[tuple[bytes, Fields]], *, resumed: bool) -> list[StreamMessage]:
        over_cap = self._over_delivery_cap(entries) if resumed and self.max_deliveries else set()
        good: list[StreamMessage] = []
        for raw_id, fields in entries:
            entry_id = text(raw_id)
            data = fields.get(keys.DATA_FIELD.encode()) if fields else None
            if not fields:
                self.dead_letter(entry_id, "payload_lost: entry was trimmed or deleted", b"")
                continue
            if entry_id in over_cap:
                reason = f"max_deliveries: delivered more than {self.max_deliveries} times"
                self.dead_letter(entry_id, reason, self._retried(data))
                continue
            try:
                message = decode(data, self.max_entry_bytes)
            except InvalidMessageError as exc:
                self.dead_letter(entry_id, str(exc), data)
                continue
            good.append(StreamMessage(entry_id, message, data or b""))
        return good

    def _over_delivery_cap(self, entries: Sequence[tuple[bytes, Fields]]) -> set[str]:
        first, last = text(entries[0][0]), text(entries[-1][0])
        rows = self._with_group(
            lambda: self.redis.xpending_range(
                self.stream, self.group, min=first, max=last, count=len(entries), consumername=self.name
            ),
            f"XPENDING {self.stream}",
        )
        cap = self.max_deliveries or 0
        return {text(row["message_id"]) for row in rows if row["times_delivered"] > cap}

    # -- ending entries ---------------------------------------------------------------------------------

    def ack(self, *ids: str) -> int:
        """XACK in one round-trip; returns how many were still pending."""
        if not ids:
            return 0
        with connection_errors(f"XACK {self.stream}"):
            return int(self.redis.xack(self.stream, self.group, *ids))

    def requeue(
        self,
        msg: StreamMessage,
        delay_s: float = 0.0,
        *,
        marker: str | None = None,
        marker_ttl_ms: int = 0,
        count_retry: bool = True,
    ) -> bool:
        """End this entry and enqueue the message again with ``retry + 1``, after ``delay_s`` (held in a
        Redis sorted set, moved back by ``move_due``). False when another worker already ended the entry.

        ``marker``: the task's run-marker key, handed over to the retry so nothing runs beside it.
        ``count_retry`` False puts it back as it was (a failure that was not the task's fault)."""
        payload = msg.message.with_retry(msg.message.retry + int(count_retry)).encode()
        delay_ms = max(0, round(delay_s * 1000))
        keys_ = [self.stream, self.delayed] + ([marker] if marker else [])
        with connection_errors(f"requeue {msg.id}"):
            result = self.scripts.run(
                "requeue", keys_, [self.group, msg.id, payload, delay_ms, marker_ttl_ms, self.name]
            )
        return bool(result)

    def dead_letter(self, msg: StreamMessage | str, reason: str, payload: bytes | str | None = None) -> bool:
        """Move an entry to ``<stream>:dlq`` (original_id, payload, reason, failed_at) and ack it, once.

        For a StreamMessage the payload is the task JSON with retry incremented (as the Go original writes);
        for a bare id it is the raw entry data, cut to the entry size limit."""
        if isinstance(msg, StreamMessage):
            entry_id = msg.id
            body: bytes | str = msg.message.with_retry(msg.message.retry + 1).encode()
        else:
            entry_id = msg
            body = (payload or b"")[: self.max_entry_bytes]
        done = self._dead_letter(entry_id, reason, body, ack=True)
        return done

    def _dead_letter(self, entry_id: str, reason: str, body: bytes | str, *, ack: bool) -> bool:
        failed_at = format_timestamp(datetime.now(UTC))
        held_by = self.name if ack else ""  # "": already out of the pending list, nothing to check or ack
        args: list[Any] = [self.group, entry_id, body, reason[:500], failed_at, self.dlq_maxlen, held_by]
        with connection_errors(f"dead-letter {entry_id}"):
            done = bool(self.scripts.run("dead_letter", [self.stream, self.dlq], args))
        if done:
            self.log.warning("entry dead-lettered", extra={"entry_id": entry_id, "reason": reason[:200]})
            if self.on_dead_letter:
                self.on_dead_letter(entry_id, reason, body)
        return done

    def _retried(self, data: bytes | None) -> bytes | str:
        """A dead letter's payload is the task JSON with retry incremented, when the data is a message."""
        try:
            message = decode(data, self.max_entry_bytes)
        except InvalidMessageError:
            return (data or b"")[: self.max_entry_bytes]
        return message.with_retry(message.retry + 1).encode()

    # -- leases and recovery ----------------------------------------------------------------------------

    def extend(self, ids: Iterable[str]) -> list[str]:
        """Renew leases: reset the idle time of entries this consumer still owns, without counting a
        delivery. Returns the ids still owned; a missing id was reclaimed by another consumer or ended."""
        id_list = list(ids)
        if not id_list:
            return []
        with connection_errors(f"extend leases on {self.stream}"):
            owned = self.scripts.run("extend", [self.stream], [self.group, self.name, *id_list])
        return [text(entry_id) for entry_id in owned]

    def reclaim(self, min_idle_ms: int, count: int = 100) -> list[StreamMessage]:
        """Claim entries of other consumers idle for ``min_idle_ms`` (never sooner), via XAUTOCLAIM.

        Entries over the delivery cap are dead-lettered as ``max_deliveries``; entries whose payload was
        trimmed away as ``payload_lost``. One call advances a cursor through the pending list."""
        reply = self._with_group(
            lambda: self.scripts.run(
                "reclaim", [self.stream], [self.group, self.name, min_idle_ms, self._reclaim_cursor, count]
            ),
            f"XAUTOCLAIM {self.stream}",
        )
        cursor, claimed, deleted = reply
        self._reclaim_cursor = text(cursor)
        for entry_id in deleted:  # Redis 7 already removed these from the pending list
            self._dead_letter(text(entry_id), "payload_lost: entry was trimmed or deleted", b"", ack=False)
        messages: list[StreamMessage] = []
        fresh: list[tuple[bytes, Fields]] = []
        for raw_id, flat, deliveries in claimed:
            entry_id = text(raw_id)
            if self.max_deliveries and flat and int(deliveries) > self.max_deliveries:
                data = dict(zip(flat[::2], flat[1::2], strict=True)).get(keys.DATA_FIELD.encode())
                self.dead_letter(
                    entry_id, f"max_deliveries: delivered {deliveries} times", self._retried(data)
                )
                continue
            fresh.append((raw_id, dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {}))
        if fresh:
            messages = self._accept(fresh, resumed=False)
        return messages

    def move_due(self, limit: int = 500) -> tuple[int, float | None]:
        """Move due delayed retries into the stream; returns (moved, seconds until the next is due)."""
        with connection_errors(f"move delayed retries of {self.stream}"):
            moved, next_ms = self.scripts.run("move_due", [self.delayed, self.stream], [limit])
        return int(moved), (None if int(next_ms) < 0 else int(next_ms) / 1000)

    def trim(self, maxlen: int = keys.DEFAULT_STREAM_MAXLEN) -> int:
        """Bound the stream to about ``maxlen`` without ever removing an unacknowledged entry."""
        with connection_errors(f"trim {self.stream}"):
            return int(self.scripts.run("trim", [self.stream], [maxlen]))

    def reap_consumers(self, min_idle_ms: int) -> list[str]:
        """Remove consumers that own no pending entry and were idle at least ``min_idle_ms``."""
        removed = self._with_group(
            lambda: self.scripts.run("reap_consumers", [self.stream], [self.group, min_idle_ms, self.name]),
            f"XINFO CONSUMERS {self.stream}",
        )
        return [text(name) for name in removed]

    def pending_summary(self) -> PendingSummary:
        reply = self._with_group(
            lambda: self.redis.xpending(self.stream, self.group), f"XPENDING {self.stream}"
        )
        consumers = {text(c["name"]): int(c["pending"]) for c in reply.get("consumers") or []}
        oldest, newest = reply.get("min"), reply.get("max")
        return PendingSummary(
            int(reply["pending"]),
            text(oldest) if oldest else None,
            text(newest) if newest else None,
            consumers,
        )
