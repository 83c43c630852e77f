"""The Redis side of one mailer on the outbox stream, as consumer ``consumer`` of ``group``: which entries
to mail next (its own pending entries first, then idle entries of dead consumers reclaimed with
XAUTOCLAIM, then new ones), the lease on an entry being mailed, the receipt of a mailed entry and the
XACK that ends every entry.

A receipt ``<outbox>:sent:<entry id>`` (kept 7 days) says the mail went out; it is written in one MULTI
with the XACK, so a mailed entry is never acknowledged without one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Final

import redis

log = logging.getLogger(__name__)

RECEIPT_TTL_S: Final = 7 * 24 * 3600
READ_COUNT: Final = 50

Entry = tuple[str, Mapping[Any, Any] | None]  # (entry id, raw fields; empty or None: payload gone)

# Renew this consumer's lease on one outbox entry: XCLAIM to itself resets the idle time (JUSTID: no
# delivery counted), only while it still owns the entry. 1: still ours; 0: acknowledged or taken over.
_LEASE: Final = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p[1] == nil or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


def text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class Outbox:
    """One consumer's reads, leases, receipts and acknowledgements on the outbox stream ``stream``.
    ``reclaim_idle_s``: how long an entry sits idle in another consumer's hands before it is taken over;
    ``block_ms`` bounds each blocking read."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        consumer: str,
        *,
        reclaim_idle_s: float,
        block_ms: int,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.reclaim_idle_s = reclaim_idle_s
        self.block_ms = block_ms
        self._lease = client.register_script(_LEASE)
        self._group_ready = False
        self._pending_cursor: str | None = "0"  # this consumer's own pending entries are read first
        self._claim_cursor = "0-0"
        self._next_claim = 0.0

    def receipt_key(self, entry_id: str) -> str:
        return f"{self.stream}:sent:{entry_id}"

    def rewind(self) -> None:
        """Read this consumer's own pending entries again first: entries read before are still ours."""
        self._pending_cursor = "0"

    def after_error(self, exc: redis.RedisError) -> None:
        """After a Redis error: take the entries read before it up again; on NOGROUP, make the group anew."""
        self.rewind()
        if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
            self._group_ready = False  # the group or the stream went away (FLUSHALL, a new Redis)

    # -- reading ---------------------------------------------------------------------------------------

    def next_batch(self) -> list[Entry]:
        if not self._group_ready:
            self._ensure_group()
        if self._pending_cursor is not None:
            entries = self._read(self._pending_cursor, None)
            if entries:
                self._pending_cursor = entries[-1][0]
                return entries
            self._pending_cursor = None
        if time.monotonic() >= self._next_claim:
            entries = self._claim()
            if entries:
                return entries
        # block no longer than until the next reclaim sweep is due (and never 0: that is forever)
        due_ms = int((self._next_claim - time.monotonic()) * 1000)
        return self._read(">", max(1, min(self.block_ms, due_ms)))

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("mailer group created", extra={"stream": self.stream, "group": self.group})
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _read(self, cursor: str, block_ms: int | None) -> list[Entry]:
        reply: Any = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: cursor}, count=READ_COUNT, block=block_ms
        )
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            batches = [batch[0] for batch in reply.values()]
        else:
            batches = [stream[1] for stream in reply]
        return [(text(raw_id), fields) for batch in batches for raw_id, fields in batch]

    def _claim(self) -> list[Entry]:
        """Entries idle in another (dead) consumer's hands for ``reclaim_idle_s``: XAUTOCLAIM, a sweep at a
        time; a full sweep is repeated every ``reclaim_idle_s / 2``."""
        reply: Any = self.client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=int(self.reclaim_idle_s * 1000),
            start_id=self._claim_cursor,
            count=READ_COUNT,
        )
        self._claim_cursor = text(reply[0])
        if self._claim_cursor == "0-0":
            self._next_claim = time.monotonic() + self.reclaim_idle_s / 2
        entries: list[Entry] = []
        for raw_id, fields in reply[1]:
            if raw_id is None:  # Redis 6.2: a claimed entry whose payload is gone, reported without its id
                self._pending_cursor = "0"  # it is in our own pending list now: read there, acknowledged
                continue
            entries.append((text(raw_id), fields))
        if entries:
            log.info(
                "mailer reclaimed idle outbox entries",
                extra={"stream": self.stream, "count": len(entries), "first_entry_id": entries[0][0]},
            )
        return entries

    # -- one entry -------------------------------------------------------------------------------------

    def has_receipt(self, entry_id: str) -> bool:
        return bool(self.client.exists(self.receipt_key(entry_id)))

    def renew_lease(self, entry_id: str) -> bool:
        return bool(self._lease(keys=[self.stream], args=[self.group, self.consumer, entry_id]))

    def record(self, entry_id: str) -> None:
        """The receipt and the XACK, in one MULTI: a mailed entry is never acknowledged without one."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.receipt_key(entry_id), f"{self.consumer} {int(time.time())}", ex=RECEIPT_TTL_S)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.execute()

    def ack(self, entry_id: str) -> None:
        self.client.xack(self.stream, self.group, entry_id)
