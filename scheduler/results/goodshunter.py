"""What a crawl writes in a real GoodsHunter (``app.task_store = mysql``), as its Go scheduler does it,
with our guarantees: items in ``items``, the task's timeline in ``task_items``, ``baseline_at`` and
``last_run_at`` on the row, new-item and price-drop events in the mail outbox.

A crawl is at-least-once (a ``kill -9`` after these writes and before the ack runs it again), so every
step is safe to repeat, in this order:

1. read the task row and its user; a guest whose ``guest:active:<user>`` key expired is stopped instead;
2. compare the items with the dedup hash ``dedup:<task>`` (source id -> last price, shared with a Go
   scheduler during a migration): new, unchanged, cheaper, dearer;
3. one MySQL transaction: upsert the items, link them (rank, time), refresh a cheaper item's link time,
   remove links beyond ``app.max_items_per_task`` (oldest first); repeated, it writes the same rows;
4. one Lua script: the new prices into the dedup hash and the events into the outbox, only for items
   whose hash value is still what step 2 compared against; repeated, it finds the prices already
   merged and writes no event, so no mail is sent twice;
5. ``last_run_at`` (and ``baseline_at`` on the first run) last: a crash before it repeats a first run as
   a first run, which notifies nothing.

(Over 300 lines: one crawl's writes are one transaction and one script, in the order they must happen.)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import pymysql
import pymysql.cursors

from scheduler._proto import crawler_pb2
from scheduler.taskqueue import keys
from scheduler.taskqueue._redis import connection_errors, text
from scheduler.taskqueue.scripts import Scripts
from scheduler.tasks.mysql_store import RUNNABLE, MysqlPool, StoreError

log = logging.getLogger(__name__)

# a memory safety valve (~100 MB at most): the mailers' trim removes mailed entries long before; unsent
# events are trimmed only when 100,000 wait (no mailer has run, or SMTP refuses everything, for long)
OUTBOX_MAXLEN: Final = 100_000
TRANSACTION_TRIES: Final = 3
# deadlock, lock wait timeout, server gone away, connection lost during a query
RETRY_IN_PLACE: Final = frozenset({1213, 1205, 2006, 2013})


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What one crawl needs to know about its row beyond the spec, read just before the crawl."""

    task_id: int
    keyword: str
    first_run: bool  # baseline_at not set: this crawl sets it and notifies nothing
    notify_to: str  # the user's address when notifications are on (and not a first run), else ''
    oneshot: bool


@dataclass(frozen=True, slots=True)
class Merged:
    held: bool  # False: the entry was no longer this consumer's; nothing was merged, nothing mailed
    new: int
    dropped: int
    events: int
    already_merged: int
    unlinked: int


class GoodsHunterResults:
    def __init__(
        self,
        pool: MysqlPool,
        scripts: Scripts,
        stream: str,
        max_items_per_task: int,
        mail: bool = True,
        *,
        group: str = keys.DEFAULT_GROUP,
        consumer: str = "",
    ) -> None:
        self.stream, self.group, self.consumer = stream, group, consumer
        self.mail = mail  # False (no email.smtp_host): events are counted, not queued for a mailer
        self.pool = pool
        self.scripts = scripts
        self.redis = scripts.client
        self.outbox = keys.mail_outbox(stream)
        self.max_items = max_items_per_task

    # -- before the crawl -------------------------------------------------------------------------------

    def prepare(self, task_id: int) -> TaskContext | None:
        """The row's context; None when the task must not be crawled (gone, or a guest gone idle: the row
        is stopped, as the Go scheduler stops it)."""
        with self.pool.connection() as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(
                "SELECT t.keyword, t.status, t.baseline_at, t.notify_enabled, t.task_type, t.user_id, u.email, u.role"
                " FROM tasks t LEFT JOIN users u ON u.id = t.user_id WHERE t.id = %s",
                (task_id,),
            )
            row: dict[str, Any] | None = cur.fetchone()
            if row is None or str(row["status"] or "").lower() not in RUNNABLE:
                return None  # gone, or stopped by the API since the entry was read
            role = str(row["role"] or "").strip().lower()
            if role == "guest":
                with connection_errors(f"read the guest activity of task {task_id}"):
                    active = self.redis.exists(keys.guest_active_key(int(row["user_id"])))
                if not active:
                    cur.execute("UPDATE tasks SET status = 'stopped' WHERE id = %s", (task_id,))
                    log.info("guest task stopped: the guest is no longer active", extra={"task_id": task_id})
                    return None
        first = row["baseline_at"] is None
        email = str(row["email"] or "").strip()
        return TaskContext(
            task_id=task_id,
            keyword=str(row["keyword"] or ""),
            first_run=first,
            notify_to=email if (self.mail and email and bool(row["notify_enabled"]) and not first) else "",
            oneshot=str(row["task_type"] or "") == "oneshot",
        )

    # -- after a successful crawl -----------------------------------------------------------------------

    def record(self, ctx: TaskContext, found: Sequence[crawler_pb2.Item], entry_id: str) -> Merged:
        items = _unique(found)
        dedup = keys.dedup_hash(ctx.task_id)
        sources = [it.source_id for it in items]
        with connection_errors(f"read the dedup hash of task {ctx.task_id}"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.exists(dedup)
            if sources:
                pipe.hmget(dedup, sources)
            exists, *rest = pipe.execute()
        raw = rest[0] if rest else []
        known = {s: text(v) for s, v in zip(sources, raw, strict=True) if v is not None}
        if not exists and not ctx.first_run and sources and self._has_links(ctx.task_id):
            # the hash is gone after the baseline (evicted, flushed, a restore, deleted): every item would
            # look new, a mail storm; this crawl is a new baseline instead (the items are written all the same)
            log.warning(
                "dedup hash of task %d missing: this crawl is a new baseline, nothing is mailed", ctx.task_id
            )
            ctx = dataclasses.replace(ctx, first_run=True, notify_to="")
        now = self.pool.now()
        # one connection for the transaction and, after the merge script, the row's times (one checkout,
        # not two); the whole sequence is repeatable, so a deadlock or a lost connection repeats it
        for attempt in range(1, TRANSACTION_TRIES + 1):
            try:
                with self.pool.connection() as conn:
                    unlinked, events = self._write_rows(conn, ctx, items, known, now)
                    written, mailed, merged = self._merge(ctx, entry_id, items, known, events)
                    if written >= 0:
                        self._ran(conn, ctx, now)
                break
            except StoreError as exc:
                if exc.code not in RETRY_IN_PLACE or attempt == TRANSACTION_TRIES:
                    raise
                log.info(
                    "task database: %s; transaction repeated", exc.detail, extra={"task_id": ctx.task_id}
                )
        if written < 0:
            log.warning(
                "crawl not merged: its entry is no longer this daemon's", extra={"task_id": ctx.task_id}
            )
            return Merged(False, 0, 0, 0, 0, unlinked)
        kinds = list(events.values())
        return Merged(True, kinds.count("new_item"), kinds.count("price_drop"), mailed, merged, unlinked)

    def _merge(
        self,
        ctx: TaskContext,
        entry_id: str,
        items: list[crawler_pb2.Item],
        known: dict[str, str],
        events: dict[str, str],
    ) -> tuple[int, int, int]:
        """Step 4, ``merge_items.lua``: (prices written or -1 when the entry is no longer ours, events
        written, items already merged)."""
        args: list[object] = [OUTBOX_MAXLEN, ctx.task_id, ctx.keyword, ctx.notify_to, self.group, self.consumer,
                              entry_id]  # fmt: skip
        for it in items:
            args += [it.source_id, known.get(it.source_id, ""), it.price, it.title, it.image_url, it.item_url,
                     events.get(it.source_id, "")]  # fmt: skip
        keys_ = [keys.dedup_hash(ctx.task_id), self.outbox, self.stream]
        with connection_errors(f"merge the items of task {ctx.task_id}"):
            written, mailed, merged = self.scripts.run("merge_items", keys_, args)
        return int(written), int(mailed), int(merged)

    @staticmethod
    def _ran(conn: Any, ctx: TaskContext, now: datetime) -> None:
        """Step 5: the row's run times, last (autocommit)."""
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE tasks SET last_run_at = %s, baseline_at = COALESCE(baseline_at, %s)"
                + (", status = 'completed'" if ctx.oneshot else "")
                + " WHERE id = %s",
                (now, now, ctx.task_id),
            )

    def _has_links(self, task_id: int) -> bool:
        """Did an earlier crawl link items? (No hash and no links: the earlier crawls found nothing, and
        every item now is really new.)"""
        with self.pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM task_items WHERE task_id = %s LIMIT 1", (task_id,))
            return cur.fetchone() is not None

    def _write_rows(
        self,
        conn: Any,
        ctx: TaskContext,
        items: list[crawler_pb2.Item],
        known: dict[str, str],
        now: datetime,
    ) -> tuple[int, dict[str, str]]:
        """Step 3, one transaction. Returns (links removed by the cap, the events by source id)."""
        events: dict[str, str] = {}
        conn.begin()
        try:
            with conn.cursor() as cur:
                if items:
                    cur.executemany(
                        "INSERT INTO items (created_at, updated_at, source_id, title, price, image_url, item_url)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE"
                        " updated_at = IF(price <=> VALUES(price) AND title <=> VALUES(title)"
                        " AND image_url <=> VALUES(image_url) AND item_url <=> VALUES(item_url),"
                        " updated_at, VALUES(updated_at)),"
                        " title = VALUES(title), price = VALUES(price), image_url = VALUES(image_url),"
                        " item_url = VALUES(item_url)",
                        # in source-id order: two crawls sharing items lock them in the same order (no deadlock)
                        sorted(
                            (now, now, it.source_id, it.title, it.price, it.image_url, it.item_url)
                            for it in items
                        ),
                    )
                    # each item's row id and, where this task links it already, the link's time: one
                    # round trip (at most one link per task and item: the key the INSERT below relies on)
                    marks = ", ".join(["%s"] * len(items))
                    cur.execute(
                        "SELECT i.id, i.source_id, ti.item_id IS NOT NULL, ti.created_at FROM items i"
                        " LEFT JOIN task_items ti ON ti.item_id = i.id AND ti.task_id = %s"
                        f" WHERE i.source_id IN ({marks})",
                        [ctx.task_id, *[it.source_id for it in items]],
                    )
                    rows = cur.fetchall()
                    ids = {_key(str(s)): int(i) for i, s, _, _ in rows}
                    linked = {_key(str(s)): t for _, s, has_link, t in rows if has_link}
                    links, cheaper = [], []
                    anchor: datetime | None = None  # the link time of the last known item above
                    for rank, it in enumerate(items, start=1):
                        if _key(it.source_id) not in ids:  # the database reads this id as another's
                            log.warning("item %r not found after its upsert; skipped", it.source_id[:80])
                            continue
                        old = known.get(it.source_id)
                        if old is None:
                            # unknown below a known item: found by crawling deeper, not new on the market
                            # (the Go scheduler's rule): it joins the timeline at that item's time, unmailed
                            links.append((ctx.task_id, ids[_key(it.source_id)], anchor or now, rank))
                            if anchor is None:
                                events[it.source_id] = "new_item"
                            continue
                        anchor = linked.get(_key(it.source_id), anchor)
                        links.append((ctx.task_id, ids[_key(it.source_id)], now, rank))
                        if _price(old) is not None and it.price < (_price(old) or 0):
                            events[it.source_id] = "price_drop"
                            cheaper.append(ids[_key(it.source_id)])
                    cur.executemany(
                        "INSERT INTO task_items (task_id, item_id, created_at, `rank`) VALUES (%s, %s, %s, %s)"
                        " ON DUPLICATE KEY UPDATE `rank` = VALUES(`rank`)",
                        sorted(links, key=lambda link: link[1]),
                    )
                    if cheaper:  # a drop moves the item up the timeline (and marks it NEW in the API)
                        marks = ", ".join(["%s"] * len(cheaper))
                        cur.execute(
                            f"UPDATE task_items SET created_at = %s WHERE task_id = %s AND item_id IN ({marks})",
                            [now, ctx.task_id, *cheaper],
                        )
                unlinked = self._cap(cur, ctx.task_id)
            conn.commit()
        except BaseException:
            try:
                conn.rollback()
            except pymysql.MySQLError:  # the connection is gone: the original error says why
                pass
            raise
        if ctx.first_run:
            events = {}  # the baseline: everything is known from now on, nothing is news
        return unlinked, events

    def _cap(self, cur: Any, task_id: int) -> int:
        """Keep the newest ``max_items`` links (by time, then rank): exactly that many, never a whole
        batch of equal times too many (the Go scheduler deletes every link as old as the cut-off)."""
        cur.execute(
            "SELECT item_id FROM task_items WHERE task_id = %s ORDER BY created_at DESC, `rank` ASC"
            " LIMIT 18446744073709551615 OFFSET %s",
            (task_id, self.max_items),
        )
        extra = [int(r[0]) for r in cur.fetchall()]
        if not extra:
            return 0
        for i in range(0, len(extra), 500):
            chunk = extra[i : i + 500]
            marks = ", ".join(["%s"] * len(chunk))
            cur.execute(
                f"DELETE FROM task_items WHERE task_id = %s AND item_id IN ({marks})", [task_id, *chunk]
            )
        return len(extra)


def _unique(found: Sequence[crawler_pb2.Item]) -> list[crawler_pb2.Item]:
    """Items with a source id (trimmed), each once as the database compares them (case and trailing
    spaces aside, as its ``_ci`` collation does): the first, best-ranked, wins."""
    seen: set[str] = set()
    out = []
    for it in found:
        source = it.source_id.strip()
        if source and _key(source) not in seen:
            seen.add(_key(source))
            copy = crawler_pb2.Item()
            copy.CopyFrom(it)
            copy.source_id = source
            out.append(copy)
    return out


def _key(source_id: str) -> str:
    return source_id.rstrip().casefold()


def _price(raw: str) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None
