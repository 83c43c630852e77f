"""A private GoodsHunter database per test session on a real MariaDB/MySQL server.

The server is ``GOODSHUNTER_TEST_MYSQL`` (a Go DSN without the database, e.g. ``root@tcp(127.0.0.1:3306)/``)
or, by default, 127.0.0.1:3306 as root with an empty password (machines of this kind and CI run MariaDB
there). A database ``gh_test_<random>`` is created from ``goodshunter_schema.sql`` and dropped at the end.
Where no server answers, the tests that need it skip with one line saying why.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors

from scheduler.config.addresses import MysqlTarget, parse_go_dsn

SCHEMA = Path(__file__).with_name("goodshunter_schema.sql")
DEFAULT_SERVER = "root@tcp(127.0.0.1:3306)/mysql"


def server_target() -> MysqlTarget:
    dsn = os.environ.get("GOODSHUNTER_TEST_MYSQL") or DEFAULT_SERVER
    return parse_go_dsn(dsn if not dsn.endswith("/") else dsn + "mysql")


def unreachable_reason() -> str | None:
    t = server_target()
    try:
        pymysql.connect(host=t.host, port=t.port, user=t.user or None, password=t.password,
                        connect_timeout=2).close()  # fmt: skip
    except pymysql.MySQLError as exc:
        return f"no MySQL/MariaDB server at {t.host}:{t.port} ({exc.args[-1] if exc.args else exc}); set GOODSHUNTER_TEST_MYSQL"
    return None


class Database:
    """One private database: its DSN for the daemon, a connection for the test's own reads and writes."""

    def __init__(self) -> None:
        server = server_target()
        self.name = f"gh_test_{secrets.token_hex(4)}"
        self.server = server
        admin = self._connect(None)
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {self.name} CHARACTER SET utf8mb4")
        admin.close()
        self.conn = self._connect(self.name)
        lines = [line for line in SCHEMA.read_text().splitlines() if not line.strip().startswith("--")]
        with self.conn.cursor() as cur:
            for statement in "\n".join(lines).split(";"):
                if statement.strip():
                    cur.execute(statement)

    def _connect(self, database: str | None) -> pymysql.connections.Connection[Any]:
        t = self.server
        return pymysql.connect(host=t.host, port=t.port, user=t.user or None, password=t.password,
                               database=database, autocommit=True, charset="utf8mb4",
                               cursorclass=pymysql.cursors.DictCursor)  # fmt: skip

    @property
    def dsn(self) -> str:
        t = self.server
        creds = f"{t.user}:{t.password}@" if t.password else (f"{t.user}@" if t.user else "")
        return f"{creds}tcp({t.host}:{t.port})/{self.name}?parseTime=true&loc=Local"

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
        self.execute(f"DROP DATABASE {self.name}")
        self.conn.close()


def session_database() -> Iterator[Database]:
    db = Database()
    try:
        yield db
    finally:
        db.close()
