"""GoodsHunter's MySQL as the task store (``app.task_store = mysql``): its API owns the ``tasks`` rows.

The daemon reads specs from ``tasks`` (in batches, one query per read-loop batch) and never creates,
migrates or re-enables rows: the API starts and stops tasks by writing ``status``. The only row write
here is the guest stop (a guest whose activity key expired), as the Go scheduler does it.
"""

from __future__ import annotations

import logging
import queue
import select
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pymysql
import pymysql.cursors

from scheduler.config.addresses import MysqlTarget
from scheduler.errors import InvalidTaskError, SchedulerError
from scheduler.tasks.registry import Platform, SortBy, SortOrder, Status, TaskSpec

log = logging.getLogger(__name__)

# the proto enums' numbers, as the API stores them in tasks.platform / sort_by / sort_order
PLATFORMS: Final[dict[int, Platform]] = {1: "mercari", 2: "yahoo_auction"}
SORTS: Final[dict[int, SortBy]] = {0: "created_time", 1: "price", 2: "score", 3: "num_likes"}
ORDERS: Final[dict[int, SortOrder]] = {0: "desc", 1: "asc"}
# 'queued' is what the Go dispatcher writes while a run is queued; 'completed' ends a one-shot task
RUNNABLE: Final = frozenset({"running", "queued"})
_COLUMNS: Final = "id, keyword, min_price, max_price, platform, sort_by, sort_order, status, updated_at"


class StoreError(SchedulerError):
    """The task database could not be reached or refused a query (the entry stays pending or retries).
    ``code`` is the server's error number where it gave one (1045: access denied...)."""

    def __init__(self, message: str, code: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail or message


def _reusable(conn: pymysql.connections.Connection[Any], idle_s: float, ping_idle_s: float) -> bool:
    """Whether an idle connection is still open. Its socket first, without a round trip: an idle
    connection has nothing to read, so a readable socket means the server closed it (EOF) or said why
    before closing (an error packet). The Go driver checks its pooled connections the same way; a ping
    would cost a round trip on every checkout (several per crawl). A quiet socket proves nothing of a
    connection the network forgot without a FIN (a NAT, a load balancer or a firewall past its idle
    timeout, a server host that rebooted): its next query is reset (2013). So one idle longer than
    ``ping_idle_s`` is pinged as well, as before (under load, connections never idle that long)."""
    sock = getattr(conn, "_sock", None)
    if sock is not None:
        try:
            poller = select.poll()  # not select(): no limit on the descriptor's number
            poller.register(sock, select.POLLIN)
            if poller.poll(0):  # readable, hung up or in error: not reusable
                return False
        except (OSError, ValueError):  # closed meanwhile
            return False
        if idle_s < ping_idle_s:
            return True
    try:
        conn.ping(reconnect=False)
    except pymysql.MySQLError:
        return False
    return True


class MysqlPool:
    """A few PyMySQL connections shared by the worker threads (a connection is not thread-safe)."""

    def __init__(
        self,
        target: MysqlTarget,
        size: int = 8,
        connect_timeout: float = 5.0,
        wait_s: float = 10.0,
        ping_idle_s: float = 1.0,
    ) -> None:
        self.target = target
        self.size = size
        self.connect_timeout = connect_timeout
        self.wait_s = wait_s  # longest wait for a free connection: a stalled database never stalls a thread
        self.ping_idle_s = ping_idle_s  # a connection idle longer is pinged at checkout, not only polled
        loc = target.params.get("loc", "UTC")
        self.local = loc == "Local"  # the machine's zone, daylight saving included (naive local times)
        self.tz = UTC if self.local else _zone(loc)
        # (connection, time.monotonic() when it was put back)
        self._idle: queue.LifoQueue[tuple[pymysql.connections.Connection[Any], float]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)

    def _connect(self) -> pymysql.connections.Connection[Any]:
        t = self.target
        return pymysql.connect(
            host=t.host,
            port=t.port,
            unix_socket=t.unix_socket,
            user=t.user or None,
            password=t.password.encode("utf-8"),  # as the Go driver sends it (PyMySQL would use latin-1)
            database=t.database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=self.connect_timeout,
            read_timeout=15,
            write_timeout=15,
            # a lock wait ends (1205, repeated in place) before the client's read timeout gives up
            init_command="SET SESSION innodb_lock_wait_timeout = 10",
        )

    @contextmanager
    def connection(self) -> Iterator[pymysql.connections.Connection[Any]]:
        """A connection for one unit of work; one that failed is closed, not reused."""
        if not self._slots.acquire(timeout=self.wait_s):
            raise StoreError(f"MySQL {self.target.shown()}: no connection free within {self.wait_s:g}s")
        conn = None
        try:
            try:
                conn, since = self._idle.get_nowait()
            except queue.Empty:
                pass
            else:
                if not _reusable(conn, time.monotonic() - since, self.ping_idle_s):
                    _close(conn)  # closed (wait_timeout, a restart, KILL, forgotten): a new one
                    conn = None
            if conn is None:
                try:
                    conn = self._connect()
                except (OSError, ValueError, UnicodeError) as exc:  # never the text: it may quote the DSN
                    raise StoreError(
                        f"MySQL {self.target.shown()}: cannot connect ({type(exc).__name__})"
                    ) from None
            yield conn
        except pymysql.MySQLError as exc:
            if conn is not None:
                _close(conn)
                conn = None
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            detail = _describe(exc)
            raise StoreError(f"MySQL {self.target.shown()}: {detail}", code, detail) from None
        except BaseException:
            if conn is not None:
                _close(conn)
                conn = None
            raise
        finally:
            if conn is not None:
                self._idle.put((conn, time.monotonic()))
            self._slots.release()

    def now(self) -> datetime:
        """Now, as the database's DATETIME columns hold it (the DSN's ``loc``, UTC by default, as the
        Go driver reads and writes them)."""
        return datetime.now() if self.local else datetime.now(self.tz).replace(tzinfo=None)

    def timestamp(self, value: object) -> float:
        """A DATETIME read from the database, as seconds since the epoch (0.0 for NULL)."""
        if not isinstance(value, datetime):
            return 0.0
        if value.tzinfo is not None or self.local:
            return value.timestamp()  # a naive value: local time, with the zone's rules on that date
        return value.replace(tzinfo=self.tz).timestamp()

    def close(self) -> None:
        while True:
            try:
                _close(self._idle.get_nowait()[0])
            except queue.Empty:
                return


def _zone(name: str) -> tzinfo:
    if name in ("UTC", ""):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidTaskError(f"mysql.dsn: unknown time zone loc={name!r}") from None


def _close(conn: pymysql.connections.Connection[Any]) -> None:
    try:
        conn.close()
    except Exception:  # already broken
        pass


def _describe(exc: pymysql.MySQLError) -> str:
    args: tuple[object, ...] = tuple(exc.args)
    if len(args) >= 2:
        return f"({args[0]}) {args[1]}"
    return str(exc) or type(exc).__name__


def spec_from_row(row: dict[str, Any], timestamp: Any = None) -> TaskSpec:
    """A ``tasks`` row as a TaskSpec; raises InvalidTaskError for a row the crawler could not run."""
    task_id = int(row["id"])
    platform = PLATFORMS.get(int(row["platform"] or 0))
    if platform is None:
        raise InvalidTaskError(f"invalid platform: {row['platform']!r} (1 mercari, 2 yahoo_auction)")
    sort = SORTS.get(int(row["sort_by"] or 0))
    order = ORDERS.get(int(row["sort_order"] or 0))
    if sort is None or order is None:
        raise InvalidTaskError(f"invalid sort: {row['sort_by']!r}/{row['sort_order']!r}")
    status: Status = "running" if str(row["status"] or "").lower() in RUNNABLE else "stopped"
    updated = row["updated_at"]
    if timestamp is not None:
        updated_s = float(timestamp(updated))
    else:
        updated_s = updated.timestamp() if isinstance(updated, datetime) else 0.0
    return TaskSpec(
        task_id=task_id,
        keyword=str(row["keyword"] or ""),
        platform=platform,
        min_price=int(row["min_price"] or 0),
        max_price=int(row["max_price"] or 0),
        only_on_sale=True,  # as the Go scheduler asks
        sort=sort,
        order=order,
        status=status,
        updated_at=updated_s,
    )


class MysqlTaskStore:
    """The TaskRegistry of ``app.task_store = mysql``: GoodsHunter's ``tasks`` table, read-only."""

    owns_status = False  # the API starts and stops tasks; the daemon never re-enables a row

    def __init__(self, pool: MysqlPool) -> None:
        self.pool = pool

    def query(self, sql: str, args: Iterable[object] = ()) -> list[dict[str, Any]]:
        with self.pool.connection() as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(sql, tuple(args))
            return list(cur.fetchall())

    def get(self, task_id: int) -> TaskSpec | None:
        return self.get_many([task_id])[task_id]

    def get_many(self, task_ids: list[int]) -> dict[int, TaskSpec | None]:
        """Specs by id (None: no such row, or a row that cannot be crawled, logged once per read)."""
        out: dict[int, TaskSpec | None] = dict.fromkeys(task_ids)
        if not task_ids:
            return out
        marks = ", ".join(["%s"] * len(task_ids))
        for row in self.query(f"SELECT {_COLUMNS} FROM tasks WHERE id IN ({marks})", task_ids):
            try:
                out[int(row["id"])] = spec_from_row(row, self.pool.timestamp)
            except (InvalidTaskError, ValueError, TypeError) as exc:
                log.error("task %s has a row that cannot be crawled (%s); treated as unknown", row["id"], exc)
        return out

    def queue_get_many(self, pipe: Any, task_ids: list[int]) -> None:
        """Nothing to queue on the Redis pipeline: ``parse_many`` reads the rows."""

    def parse_many(self, task_ids: list[int], replies: list[Any]) -> dict[int, TaskSpec | None]:
        return self.get_many(task_ids)

    def statuses(self, task_ids: list[int]) -> dict[int, tuple[Status | None, int]]:
        specs = self.get_many(task_ids)
        return {t: (s.status, s.status_stamp) if s else (None, 0) for t, s in specs.items()}

    def registered(self, task_ids: list[int]) -> list[bool]:
        specs = self.get_many(task_ids)
        return [specs[t] is not None for t in task_ids]

    def running_ids(self) -> list[int]:
        """Every task the API has running: the periodic schedule's source."""
        return [task_id for task_id, _ in self.running()]

    def running(self) -> list[tuple[int, float]]:
        """Every running task and when it last ran or, never run, was created (seconds; 0: unknown)."""
        rows = self.query(
            "SELECT id, COALESCE(last_run_at, created_at) AS since FROM tasks"
            " WHERE status IN ('running', 'queued') ORDER BY id"
        )
        return [(int(r["id"]), self.pool.timestamp(r["since"])) for r in rows]

    def put_many(self, specs: Iterable[TaskSpec]) -> int:
        raise InvalidTaskError(
            "tasks live in GoodsHunter's database (app.task_store = mysql): create them through its API"
        )

    def delete(self, task_id: int) -> bool:
        raise InvalidTaskError(
            "tasks live in GoodsHunter's database (app.task_store = mysql): delete them through its API"
        )

    def list(self) -> list[TaskSpec]:
        rows = self.query(f"SELECT {_COLUMNS} FROM tasks ORDER BY id")
        out = []
        for row in rows:
            try:
                out.append(spec_from_row(row, self.pool.timestamp))
            except (InvalidTaskError, ValueError, TypeError):
                continue
        return out
