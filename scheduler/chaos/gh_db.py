"""A private GoodsHunter database for one chaos run, on a real MariaDB/MySQL server.

The database is ``devtools.private_mysql``'s, as the tests make it (GoodsHunter's tables from the one schema
file), on the same server.

Beside GoodsHunter's tables, ``chaos_audit`` is filled by two triggers, so the checks see every write
with its time on the machine's clock (the daemons never read it): ``linked`` per new ``task_items`` row
(the crawl's transaction committed), ``baseline`` / ``ran`` per change of ``tasks.last_run_at`` (the
crawl's last write, just before its entry is acknowledged; ``baseline`` when it also set ``baseline_at``).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pymysql

from scheduler.devtools.private_mysql import PrivateDatabase

AUDIT = [
    "CREATE TABLE chaos_audit (id bigint unsigned AUTO_INCREMENT PRIMARY KEY, task_id bigint unsigned"
    " NOT NULL, kind varchar(8) NOT NULL, at decimal(17,6) NOT NULL, INDEX (task_id, at))",
    "CREATE TRIGGER chaos_ran AFTER UPDATE ON tasks FOR EACH ROW"
    " INSERT INTO chaos_audit (task_id, kind, at)"
    " SELECT NEW.id, IF(OLD.baseline_at IS NULL AND NEW.baseline_at IS NOT NULL, 'baseline', 'ran'),"
    " UNIX_TIMESTAMP(SYSDATE(6)) FROM DUAL WHERE NOT (OLD.last_run_at <=> NEW.last_run_at)",
    "CREATE TRIGGER chaos_linked AFTER INSERT ON task_items FOR EACH ROW"
    " INSERT INTO chaos_audit (task_id, kind, at) VALUES (NEW.task_id, 'linked', UNIX_TIMESTAMP(SYSDATE(6)))",
]


@dataclass(frozen=True)
class TaskRow:
    task_id: int
    email: str
    notify: bool


@dataclass(frozen=True)
class Audit:
    task_id: int
    kind: str  # linked, baseline or ran
    at: float


class GoodsHunterDb(PrivateDatabase):
    def __init__(self) -> None:
        super().__init__(AUDIT)
        self._lock = threading.Lock()  # one connection, used by the feeder and the checks' threads
        self._watch: pymysql.connections.Connection[Any] | None = None

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        with self._lock, self.conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def execute(self, sql: str, *args: object) -> None:
        with self._lock, self.conn.cursor() as cur:
            cur.execute(sql, args or None)

    def add_rows(self, tasks: int, per_user: int, muted_every: int) -> list[TaskRow]:
        """Users and their running monitor tasks, as the API inserts them (ids 1..tasks); every
        ``muted_every``-th task has notifications off."""
        now = datetime.now()
        users = (tasks + per_user - 1) // per_user
        rows = [TaskRow(t, f"buyer{(t - 1) // per_user + 1}@example.com", t % muted_every != 0)
                for t in range(1, tasks + 1)]  # fmt: skip
        with self._lock:
            self.add_running_tasks(
                [(u, f"buyer{u}@example.com") for u in range(1, users + 1)],
                [
                    (r.task_id, (r.task_id - 1) // per_user + 1, f"chaos camera {r.task_id}", r.notify)
                    for r in rows
                ],
                now,
            )
        return rows

    def last_recorded(self) -> dict[int, float]:
        """Per task, the time of its latest recorded crawl (``last_run_at`` written)."""
        found = self.query("SELECT task_id, MAX(at) FROM chaos_audit WHERE kind <> 'linked' GROUP BY task_id")
        return {int(task): float(at) for task, at in found}

    def recorded_since(self, after_id: int) -> list[tuple[int, int]]:
        """(audit id, task id) of the crawls recorded after audit row ``after_id``, on a connection of
        their own (polled every millisecond or so, never behind the feeder's queries)."""
        if self._watch is None:
            self._watch = self._connect(self.name)
        with self._watch.cursor() as cur:
            cur.execute(
                "SELECT id, task_id FROM chaos_audit WHERE id > %s AND kind <> 'linked' ORDER BY id",
                (after_id,),
            )
            return [(int(i), int(t)) for i, t in cur.fetchall()]

    def best_ranked(self, task_id: int, count: int) -> list[str]:
        """Source ids of the task's best-ranked links (the latest crawl's top items)."""
        found = self.query(
            "SELECT i.source_id FROM task_items ti JOIN items i ON i.id = ti.item_id WHERE ti.task_id = %s"
            " ORDER BY ti.`rank` LIMIT %s",
            task_id, count,
        )  # fmt: skip
        return [str(row[0]) for row in found]

    def audit(self) -> dict[int, list[Audit]]:
        out: dict[int, list[Audit]] = defaultdict(list)
        for task, kind, at in self.query("SELECT task_id, kind, at FROM chaos_audit ORDER BY at, id"):
            out[int(task)].append(Audit(int(task), str(kind), float(at)))
        return out

    def duplicate_rows(self) -> list[str]:
        """Rows that exist more than once: a task's link to one item, an item's source id."""
        links = self.query(
            "SELECT task_id, item_id, COUNT(*) FROM task_items GROUP BY task_id, item_id HAVING COUNT(*) > 1"
        )
        items = self.query(
            "SELECT source_id, COUNT(*) FROM items GROUP BY source_id HAVING COUNT(*) > 1"
        )  # compared as the column's collation does (case and trailing spaces aside)
        return [f"task {t} links item {i} {n} times" for t, i, n in links] + [
            f"item {s!r} stored {n} times" for s, n in items
        ]

    def links_per_task(self) -> dict[int, int]:
        return {
            int(t): int(n) for t, n in self.query("SELECT task_id, COUNT(*) FROM task_items GROUP BY task_id")
        }

    def count(self, table: str) -> int:
        return int(self.query(f"SELECT COUNT(*) FROM {table}")[0][0])

    def drop(self) -> None:
        if self._watch is not None:
            self._watch.close()
        with self._lock:
            super().drop()
