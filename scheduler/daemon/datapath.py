"""The GoodsHunter data path wired into the daemon (``app.task_store = mysql``): the MySQL task store,
what a crawl writes, the schedule sync and, with ``email.smtp_host``, the mailer thread."""

from __future__ import annotations

import logging
import threading

import redis

from scheduler.config.addresses import parse_go_dsn
from scheduler.config.settings import Settings
from scheduler.daemon.timers import Job
from scheduler.metrics import Metrics
from scheduler.results.goodshunter import GoodsHunterResults
from scheduler.results.mailer import Mailer
from scheduler.results.smtp_send import MailSettings
from scheduler.taskqueue import keys
from scheduler.taskqueue.scripts import Scripts
from scheduler.tasks.mysql_store import MysqlPool, MysqlTaskStore, StoreError
from scheduler.tasks.schedule_sync import sync_schedule

log = logging.getLogger(__name__)

OUTBOX_KEPT = 1000
# longer than one SMTP attempt can take against a slow server (about eight steps of up to 10 s each):
# a live mailer's entry is never taken over mid-send
MAIL_RECLAIM_IDLE_S = 300.0

# refusals that waiting will not fix: wrong password, unknown database, no tasks table
FATAL_CODES = {1044: "access denied", 1045: "refused the user or password", 1049: "unknown database",
               1146: "has no tasks table"}  # fmt: skip


class DataPath:
    def __init__(self, settings: Settings, client: redis.Redis, metrics: Metrics) -> None:
        assert settings.mysql_dsn
        self.settings = settings
        self.redis = client
        self.target = parse_go_dsn(settings.mysql_dsn)
        self.pool = MysqlPool(self.target, size=min(settings.worker_pool_size, 16))
        self.store = MysqlTaskStore(self.pool)
        mail = bool(settings.email_smtp_host)
        self.results = GoodsHunterResults(self.pool, Scripts(client), settings.task_queue_stream,
                                          settings.max_items_per_task, mail=mail, group=settings.task_queue_group,
                                          consumer=settings.consumer_name)  # fmt: skip
        self.mailer: Mailer | None = None
        if mail:
            assert settings.email_smtp_host
            self.mailer = Mailer(
                client,
                keys.mail_outbox(settings.task_queue_stream),
                settings.consumer_name,
                MailSettings(
                    settings.email_smtp_host,
                    settings.email_smtp_port,
                    settings.email_smtp_user,
                    settings.email_smtp_pass,
                    settings.email_from_email or "",
                ),
                sent=lambda kind: metrics.mails_sent.labels(kind).inc(),
                failed=lambda kind: metrics.mails_failed.labels(kind).inc(),
                reclaim_idle_s=MAIL_RECLAIM_IDLE_S,
            )
        self._mail_thread: threading.Thread | None = None

    def check(self) -> str | None:
        """At start-up: a one-line reason to refuse to start (a refusal waiting will not fix), or None.
        An unreachable server is only a warning: entries wait in the queue until it answers."""
        try:
            self.store.query("SELECT id FROM tasks LIMIT 1")
        except StoreError as exc:
            if exc.code in FATAL_CODES:
                return f"MySQL {self.target.shown()} {FATAL_CODES[exc.code]} (mysql.dsn / MYSQL_DSN): {exc.detail}"
            log.warning("task database not reachable yet (%s); crawls wait for it", exc)
        return None

    def jobs(self) -> list[Job]:
        s = self.settings
        jobs = [Job("schedule sync", lambda: min(30.0, s.schedule_interval), self.sync)]
        if self.mailer is not None:
            jobs.append(Job("outbox trim", lambda: 60.0, self.trim_outbox))
        return jobs

    def trim_outbox(self) -> None:
        """Keep about OUTBOX_KEPT mailed entries; never one the mailers have not read and acknowledged
        (the task stream's trim: below every group's oldest pending and last-delivered id)."""
        outbox = keys.mail_outbox(self.settings.task_queue_stream)
        try:
            self.results.scripts.run("trim", [outbox], [OUTBOX_KEPT])
        except redis.RedisError as exc:
            log.warning("outbox trim skipped: %s", exc)

    def sync(self) -> None:
        try:
            sync_schedule(
                self.store, self.redis, self.settings.task_queue_stream, self.settings.schedule_interval
            )
        except StoreError as exc:
            log.warning("schedule sync skipped: %s", exc)

    def start(self, halt: threading.Event) -> None:
        if self.mailer is not None:
            self._mail_thread = threading.Thread(
                target=self.mailer.run, args=(halt,), name="mailer", daemon=True
            )
            self._mail_thread.start()

    def close(self, timeout: float) -> None:
        if self._mail_thread is not None:
            self._mail_thread.join(timeout)
        self.pool.close()
