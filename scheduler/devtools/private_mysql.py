"""A private GoodsHunter database on the machine's MariaDB/MySQL server, for the tests and the fault harness.

The server is ``GOODSHUNTER_TEST_MYSQL`` (a Go DSN without the database, e.g. ``root@tcp(127.0.0.1:3306)/``)
or, by default, 127.0.0.1:3306 as root with an empty password (machines of this kind and CI run MariaDB
there). A database ``gh_test_<random>`` is made from ``tests/mysql/goodshunter_schema.sql`` (the one copy
of GoodsHunter's tables, as its API's models define them; this runs from the source tree) and dropped by
``drop``. Where no server answers, ``unreachable_reason`` says why in one line.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors

from scheduler.config.addresses import MysqlTarget, parse_go_dsn

SCHEMA = Path(__file__).resolve().parents[2] / "tests" / "mysql" / "goodshunter_schema.sql"
DEFAULT_SERVER = "root@tcp(127.0.0.1:3306)/mysql"


def server_target() -> MysqlTarget:
    dsn = os.environ.get("GOODSHUNTER_TEST_MYSQL") or DEFAULT_SERVER
    return parse_go_dsn(dsn if not dsn.endswith("/") else dsn + "mysql")


def unreachable_reason() -> str | None:
    """Why no private database can be made here (one line), or None."""
    t = server_target()
    if not SCHEMA.exists():
        return f"GoodsHunter's schema {SCHEMA} is not here (run from the source tree)"
    try:
        pymysql.connect(host=t.host, port=t.port, user=t.user or None, password=t.password,
                        connect_timeout=2).close()  # fmt: skip
    except pymysql.MySQLError as exc:
        why = exc.args[-1] if exc.args else exc
        return f"no MySQL/MariaDB server at {t.host}:{t.port} ({why}); set GOODSHUNTER_TEST_MYSQL"
    return None


class PrivateDatabase:
    """The database, GoodsHunter's tables in it (plus ``extra`` statements), and one connection to it
    (rows as dicts with ``dict_rows``). Its DSN, in the Go driver's form, is the daemons' MYSQL_DSN."""

    def __init__(self, extra: Sequence[str] = (), *, dict_rows: bool = False) -> None:
        self.server = server_target()
        self.name = f"gh_test_{secrets.token_hex(4)}"
        self._cursor = pymysql.cursors.DictCursor if dict_rows else pymysql.cursors.Cursor
        admin = self._connect(None)
        try:
            with admin.cursor() as cur:
                cur.execute(f"CREATE DATABASE {self.name} CHARACTER SET utf8mb4")
        finally:
            admin.close()
        self.conn = self._connect(self.name)
        lines = [line for line in SCHEMA.read_text().splitlines() if not line.strip().startswith("--")]
        statements = [s for s in "\n".join(lines).split(";") if s.strip()]
        with self.conn.cursor() as cur:
            for statement in [*statements, *extra]:
                cur.execute(statement)

    def _connect(self, database: str | None) -> pymysql.connections.Connection[Any]:
        t = self.server
        return pymysql.connect(host=t.host, port=t.port, user=t.user or None, password=t.password,
                               database=database, autocommit=True, charset="utf8mb4",
                               cursorclass=self._cursor)  # fmt: skip

    def add_running_tasks(self, users: Sequence[tuple[int, str]], tasks: Sequence[tuple[int, int, str, bool]],
                          now: datetime) -> None:  # fmt: skip
        """Users ``(id, email)`` and running monitor tasks ``(id, user id, keyword, notify)`` with the ids
        given, as GoodsHunter's API inserts them (Mercari, newest first, no price bounds)."""
        with self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO users (id, email, password, role, created_at) VALUES (%s, %s, 'x', 'user', %s)",
                [(user_id, email, now) for user_id, email in users],
            )
            cur.executemany(
                "INSERT INTO tasks (id, created_at, updated_at, user_id, keyword, min_price, max_price,"
                " platform, sort_by, sort_order, status, notify_enabled)"
                " VALUES (%s, %s, %s, %s, %s, 0, 0, 1, 0, 0, 'running', %s)",
                [
                    (task_id, now, now, user_id, keyword, notify)
                    for task_id, user_id, keyword, notify in tasks
                ],
            )

    @property
    def dsn(self) -> str:
        t = self.server
        creds = f"{t.user}:{t.password}@" if t.password else (f"{t.user}@" if t.user else "")
        return f"{creds}tcp({t.host}:{t.port})/{self.name}?parseTime=true&loc=Local"

    def drop(self) -> None:
        try:
            with self.conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {self.name}")
        finally:
            self.conn.close()
