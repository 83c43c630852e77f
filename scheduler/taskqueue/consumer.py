"""Consumer: reads the task stream through a consumer group, and ends entries (ack, requeue, dead-letter).

Every path that ends an entry other than the seed API's plain ``ack`` goes through ``endings`` (one Lua
script that acts only while this consumer still holds the entry, writes its outcome, releases the task's
run lock and acknowledges last): two workers racing to end the same entry produce exactly one outcome, a
refused write leaves the entry pending rather than acknowledged, and a call sent again after a lost reply
gives the same answer.

Reads are not safe to send twice (a second ``XREADGROUP >`` delivers other entries, and the first reply's
entries would sit in this consumer's pending list with no one working on them): after any failed or
unanswered read the caller takes them up again with ``recover``.

(Over 300 lines: the Go package's Consumer API in one class, as the contract names it; every ending's script
is in ``endings``.)
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
from scheduler.taskqueue.endings import NOT_HELD, Ender, Limits, acked, dead_lettered, retried
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

    @classmethod
    def from_reply(cls, reply: Any) -> PendingSummary:
        """The summary form of XPENDING (``XPENDING stream group``), as redis-py parses it."""
        consumers = {text(c["name"]): int(c["pending"]) for c in reply.get("consumers") or []}
        oldest, newest = reply.get("min"), reply.get("max")
        return cls(int(reply["pending"]), text(oldest) if oldest else None, text(newest) if newest else None,
                   consumers)  # fmt: skip


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
        limits: Limits | None = None,
        count_dead_letter: Callable[[str], None] | None = None,
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
        self.count_dead_letter = count_dead_letter  # a metric: the reason's category
        self.scripts = Scripts(self.redis)
        self.limits = limits or Limits(dlq_maxlen=dlq_maxlen)
        self.ender = Ender(self.scripts, stream, group, consumer, self.limits)
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

    def recover(self, count: int, held: Iterable[str] = ()) -> list[StreamMessage]:
        """Up to ``count`` of this consumer's pending entries that are not in ``held`` (what a lost read
        reply, a lost reclaim reply or a batch dropped after an error left behind), without counting a
        delivery. Trimmed ones are dead-lettered as payload_lost, poison as in ``read``."""
        skip = set(held)
        rows = self._with_group(
            lambda: self.scripts.run(
                "own_pending", [self.stream], [self.group, self.name, count + len(skip)]
            ),
            f"XPENDING {self.stream} {self.name}",
        )
        entries: list[tuple[bytes, Fields]] = []
        for raw_id, flat in rows:
            if text(raw_id) in skip:
                continue
            entries.append((raw_id, dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {}))
        return self._accept(entries[:count], resumed=False)

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
                self._over_cap(
                    entry_id, f"max_deliveries: delivered more than {self.max_deliveries} times", data
                )
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

    def requeue(self, msg: StreamMessage, delay_s: float = 0.0, *, count_retry: bool = True,
                error_text: str = "") -> bool:  # fmt: skip
        """End this entry and enqueue the message again with ``retry + 1``, after ``delay_s`` (held in a
        Redis sorted set, moved back by ``move_due``); the task's run lock goes to the retry, so nothing
        runs beside it. False when this consumer no longer holds the entry.

        ``count_retry`` False puts it back as it was (a failure that was not the task's fault)."""
        payload = msg.message.requeued(msg.id, count_retry).encode()
        ending = retried(msg.id, msg.message.task_id, payload, round(delay_s * 1000), error_text)
        return self.ender.end([ending])[0] != NOT_HELD

    def finish(self, msg: StreamMessage) -> bool:
        """Acknowledge an entry this consumer holds, releasing its task's run lock. False if not held."""
        return self.ender.end([acked(msg.id, msg.message.task_id)])[0] != NOT_HELD

    def dead_letter(self, msg: StreamMessage | str, reason: str, payload: bytes | str | None = None) -> bool:
        """Move an entry to ``<stream>:dlq`` (original_id, payload, reason, failed_at) and ack it, once.

        For a StreamMessage the payload is the task JSON with retry incremented (as the Go original writes);
        for a bare id it is the raw entry data, cut to the entry size limit."""
        if isinstance(msg, StreamMessage):
            entry_id, task_id = msg.id, msg.message.task_id
            body: bytes | str = msg.message.requeued(msg.id).encode()
        else:
            entry_id, task_id = msg, _task_id_of(payload, self.max_entry_bytes)
            body = (payload or b"")[: self.max_entry_bytes]
        failed_at = format_timestamp(datetime.now(UTC))
        ending = dead_lettered(entry_id, task_id, body, reason, failed_at, reason if task_id else "")
        done = self.ender.end([ending])[0] != NOT_HELD
        if done:
            self.log.warning("entry dead-lettered", extra={"entry_id": entry_id, "reason": reason[:200]})
            if self.count_dead_letter:
                self.count_dead_letter(reason.split(":", 1)[0])
        return done

    def _over_cap(self, entry_id: str, reason: str, data: bytes | None) -> None:
        """A crash loop's dead letter: as a message (retry incremented, its task's lock released) when the
        data decodes, else as the raw data."""
        try:
            message = decode(data, self.max_entry_bytes)
        except InvalidMessageError:
            self.dead_letter(entry_id, reason, data)
            return
        self.dead_letter(StreamMessage(entry_id, message, data or b""), reason)

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
        """Claim entries of other consumers idle for ``min_idle_ms`` (never sooner).

        Entries over the delivery cap are dead-lettered as ``max_deliveries``; entries whose payload was
        trimmed away as ``payload_lost`` (inside the script). One call advances a cursor through the
        pending list. A lost reply leaves claimed entries in this consumer's list: ``recover`` them."""
        failed_at = format_timestamp(datetime.now(UTC))
        reply = self._with_group(
            lambda: self.scripts.run(
                "reclaim",
                [self.stream, self.dlq],
                [self.group, self.name, min_idle_ms, self._reclaim_cursor, count, failed_at, self.dlq_maxlen],
            ),
            f"reclaim on {self.stream}",
        )
        cursor, claimed, lost = reply
        self._reclaim_cursor = text(cursor)
        for entry_id in lost:
            self.log.warning(
                "entry dead-lettered", extra={"entry_id": text(entry_id), "reason": "payload_lost"}
            )
            if self.count_dead_letter:
                self.count_dead_letter("payload_lost")
        fresh: list[tuple[bytes, Fields]] = []
        for raw_id, flat, deliveries in claimed:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            if self.max_deliveries and int(deliveries) > self.max_deliveries:
                reason = f"max_deliveries: delivered {deliveries} times"
                self._over_cap(text(raw_id), reason, fields.get(keys.DATA_FIELD.encode()))
                continue
            fresh.append((raw_id, fields))
        return self._accept(fresh, resumed=False) if fresh else []

    def move_due(self, limit: int = 500) -> tuple[int, float | None]:
        """Move due delayed retries into the stream; returns (moved, seconds until the next is due)."""
        args = [limit, keys.run_lock_prefix(self.stream), self.limits.lock_ttl_ms]
        with connection_errors(f"move delayed retries of {self.stream}"):
            moved, next_ms, *moves = self.scripts.run("move_due", [self.delayed, self.stream], args)
        for i in range(0, len(moves), 3):  # the entry id changes here: one line ties the two together
            old, new, task = (text(v) for v in moves[i : i + 3])
            self.log.info(
                "due retry moved into the stream",
                extra={"entry_id": new, "parked_entry_id": old, "task_id": int(task) if task else None},
            )
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
        """XPENDING's summary; creates the group if it is missing (``scheduler.inspect.pending`` only reads)."""
        reply = self._with_group(
            lambda: self.redis.xpending(self.stream, self.group), f"XPENDING {self.stream}"
        )
        return PendingSummary.from_reply(reply)


def _task_id_of(payload: bytes | str | None, max_bytes: int) -> int:
    try:
        return decode(payload, max_bytes).task_id
    except InvalidMessageError:
        return 0
