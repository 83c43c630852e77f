"""A private GoodsHunter database per test session on a real MariaDB/MySQL server.

``scheduler.devtools.private_mysql`` makes it (the harness's scenario uses the same); this adds the rows as
the API writes them and the reads the tests check. Where no server answers, the tests that need it skip with
one line saying why (``unreachable_reason``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from scheduler.devtools.private_mysql import PrivateDatabase


class Database(PrivateDatabase):
    """One private database: its DSN for the daemon, a connection for the test's own reads and writes."""

    def __init__(self) -> None:
        super().__init__(dict_rows=True)

    def query(self, sql: str, *args: object) -> list[dict[str, Any]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())  # type: ignore[arg-type]

    def execute(self, sql: str, *args: object) -> int:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return int(cur.lastrowid or cur.rowcount)

    def reset(self) -> None:
        for table in ("task_items", "items", "tasks", "users"):
            self.execute(f"DELETE FROM {table}")

    # -- rows as the API writes them ------------------------------------------------------------------

    def add_user(self, email: str, role: str = "admin") -> int:
        return self.execute(
            "INSERT INTO users (email, password, role, created_at) VALUES (%s, 'x', %s, %s)",
            email, role, datetime.now(),
        )  # fmt: skip

    def add_task(self, user_id: int, keyword: str, *, notify: bool = True, status: str = "running",
                 platform: int = 1, min_price: int = 0, max_price: int = 0,
                 last_run_at: datetime | None = None) -> int:  # fmt: skip
        now = datetime.now()
        return self.execute(
            "INSERT INTO tasks (created_at, updated_at, user_id, keyword, min_price, max_price, platform,"
            " sort_by, sort_order, status, notify_enabled, last_run_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, 0, 0, %s, %s, %s)",
            now, now, user_id, keyword, min_price, max_price, platform, status, notify, last_run_at,
        )  # fmt: skip

    def task(self, task_id: int) -> dict[str, Any]:
        [row] = self.query("SELECT * FROM tasks WHERE id = %s", task_id)
        return row

    def links(self, task_id: int) -> list[dict[str, Any]]:
        return self.query(
            "SELECT i.source_id, i.price, i.title, ti.`rank`, ti.created_at FROM task_items ti"
            " JOIN items i ON i.id = ti.item_id WHERE ti.task_id = %s ORDER BY ti.`rank`",
            task_id,
        )

    def close(self) -> None:
        self.drop()


def session_database() -> Iterator[Database]:
    db = Database()
    try:
        yield db
    finally:
        db.close()
