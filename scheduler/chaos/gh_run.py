"""The GoodsHunter data path under faults (scenario ``mysql-kill9``; the ``mysql`` pseudo-fault).

The run's daemons run with ``app.task_store = mysql`` against a private database on the machine's
MariaDB (gh_db) and mail through a real SMTP server in this process (gh_mail). Task rows are inserted as
the Go API inserts them (users, running monitor tasks, most with notifications on), then executes are
XADDed (gh_feed) while ``kill -9`` hits a daemon every 1 to 3 s (then restarted, under its name or a
new one): one time in two a random one at a random moment, else one aimed at the moment between a
crawl's last database write and its ack (gh_kill). Executes come at four times ``--rate`` (60 a second
by default), so that many crawls are in that window when a random kill lands.

After the faults: one more execute per task, every one recorded; then the outbox drained: a killed
mailer's entries wait for a mailer of that name (another takes them over only after 300 s), so a daemon
is started under each dead name that still holds some (``revived``), as a restart would. Then the
checks of gh_checks, from the database, the outbox and the sink, beside the queue's own (checker).
Where no MariaDB answers, the scenario is skipped with one line saying why. The database is dropped at
the end; a failed or ``--keep`` run leaves its outbox, mails, kills and audit beside the logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import shutil
import threading
import time
from typing import Any

import redis

from scheduler.chaos.cluster import GROUP, LEASE_TIMEOUT_S, STREAM, Daemon
from scheduler.chaos.faults import FAULTS, Event, Injector
from scheduler.chaos.gh_checks import CHECKS, Kill, Observed, gh_check
from scheduler.chaos.gh_db import GoodsHunterDb, TaskRow
from scheduler.chaos.gh_feed import RowFeeder
from scheduler.chaos.gh_kill import FastKill
from scheduler.chaos.gh_mail import MailSink
from scheduler.chaos.procinfo import tcp_ports_to
from scheduler.chaos.producer import Recorder
from scheduler.chaos.proxy import FaultyProxy
from scheduler.chaos.report import Row
from scheduler.chaos.runner import Options, Run
from scheduler.chaos.state import entry_key, text
from scheduler.devtools.private_mysql import unreachable_reason
from scheduler.devtools.redis_server import free_port
from scheduler.taskqueue import keys

MAILER_GROUP = "mailer"  # the mailers' group on the outbox (results/mailer.py)
MAX_ITEMS = 10  # app.max_items_per_task: small, so that the cap removes links during the run
RATE_FACTOR = 4
TASKS_PER_USER, MUTED_EVERY = 4, 5
NOT_WITH = ("idle-kill", "trim", "backlog")  # they need Redis task specs, or delete executes


class GoodsHunterRun(Run):
    def __init__(
        self, scenario: str, faults: tuple[str, ...], seed: str, opts: Options, command: str
    ) -> None:
        super().__init__(scenario, faults, seed, opts, command)
        self.db: GoodsHunterDb | None = None
        self.sink: MailSink | None = None
        self.feeder: RowFeeder | None = None
        self.rows: list[TaskRow] = []
        self.outbox: dict[str, dict[str, str]] = {}  # every event seen in the outbox, by entry id
        self._outbox_last = ""
        self._outbox_lock = threading.Lock()
        self.kills: list[Kill] = []
        self.revived: set[str] = set()
        self._smtp: dict[str, frozenset[int]] = {}
        self.aimed: dict[str, str] = {}  # victim -> the crawl an aimed kill is for

    def execute(self) -> Row:
        reason = unreachable_reason()
        if reason:
            self.row.skipped = reason
            shutil.rmtree(self.tmp, ignore_errors=True)
            return self.row
        try:
            return super().execute()
        finally:
            if self.sink is not None:
                self.sink.stop()
            if self.db is not None:
                try:
                    self.db.drop()
                except Exception as exc:
                    self.row.error = self.row.error or f"database {self.db.name} not dropped: {exc}"

    # -- FaultContext additions -----------------------------------------------------------------------

    def note_smtp(self, daemon: Daemon) -> None:
        if self.sink is not None:
            self._smtp[daemon.name] = tcp_ports_to(daemon.pid, self.sink.port)

    def log(self, event: Event) -> None:
        if event.kind == "kill9" and event.victim:
            aimed, smtp = self.aimed.pop(event.victim, ""), self._smtp.pop(event.victim, frozenset())
            pending = tuple(self._pending_tasks(event.victim))
            self.kills.append(Kill(event.t0, event.victim, event.ports, frozenset() if aimed else smtp,
                                   pending, aimed))  # fmt: skip
        super().log(event)

    def _pending_tasks(self, consumer: str) -> list[tuple[str, int]]:
        """(entry id, task id) of the entries pending to a consumer (read right after its kill: frozen
        until taken)."""
        try:
            pending: Any = self.admin().xpending_range(STREAM, GROUP, "-", "+", 10_000, consumername=consumer)
            ids = [text(p["message_id"]) for p in pending]
            tasks = []
            for entry_id in ids:
                found: Any = self.admin().xrange(STREAM, entry_id, entry_id)
                if found:
                    with contextlib.suppress(KeyError, ValueError, TypeError):
                        tasks.append((entry_id, int(json.loads(found[0][1][b"data"])["task_id"])))
            return tasks
        except redis.RedisError:
            return []

    # -- the run ----------------------------------------------------------------------------------------

    def _execute(self) -> None:
        opts = self.opts
        rng = random.Random(f"{self.seed}:{self.scenario}:workload")
        self.cluster.start_servers()
        if "proxy" in self.faults:
            self.proxy = FaultyProxy(free_port(), self.cluster.redis.port).start()
            self.cluster.redis_url_for_daemons = self.proxy.url
        self.sink = MailSink().start()
        self.db = GoodsHunterDb()
        rate = opts.rate * RATE_FACTOR
        self.rows = self.db.add_rows(max(10, int(2 * rate)), TASKS_PER_USER, MUTED_EVERY)
        self.cluster.extra_env.update(
            APP_TASK_STORE="mysql", MYSQL_DSN=self.db.dsn, APP_MAX_ITEMS_PER_TASK=str(MAX_ITEMS),
            EMAIL_SMTP_HOST="127.0.0.1", EMAIL_SMTP_PORT=str(self.sink.port),
            EMAIL_FROM_EMAIL="hunter@goodshunter.example",
        )  # fmt: skip
        self.recorder = Recorder(self.cluster.redis.port)
        for _ in range(opts.daemons):
            self.cluster.start_daemon()
        sampler = threading.Thread(target=self._sample, name="chaos-sampler", daemon=True)
        sampler.start()
        reader = threading.Thread(target=self._follow_outbox, name="chaos-outbox", daemon=True)
        reader.start()
        tasks = [r.task_id for r in self.rows]
        self.feeder = RowFeeder(self.recorder, self.db, self.admin(), tasks, opts.seconds, rate, rng)
        injectors = [FastKill(self, self.seed) if f == "kill9" else Injector(f, self, self.seed)
                     for f in self.faults if f in FAULTS]  # fmt: skip
        self.feeder.start()
        for injector in injectors:
            injector.start()
        self.feeder.join()
        self.stop.set()
        for injector in injectors:
            injector.join(30)
        self._restore()
        self._settle(sampler)

    def _follow_outbox(self) -> None:
        """Every event as it is written (the daemons trim mailed ones after a while)."""
        while not self._sampler_done.wait(0.2):
            with contextlib.suppress(redis.RedisError):
                self._read_outbox()

    def _read_outbox(self) -> None:
        """The events written since the last read (by the follower thread, or the drain and the checks)."""
        with self._outbox_lock:
            while True:
                start = f"({self._outbox_last}" if self._outbox_last else "-"
                batch: Any = self.admin().xrange(keys.mail_outbox(STREAM), start, "+", count=1000)
                for raw_id, fields in batch:
                    self.outbox[text(raw_id)] = {text(k): text(v) for k, v in fields.items()}
                if batch:
                    self._outbox_last = text(batch[-1][0])
                if len(batch) < 1000:
                    return

    def _again(self, task_ids: list[int]) -> int:
        """One more execute per task after the faults, each recorded within lease + a few seconds; then
        the mail drain. Returns how many tasks (and outboxes) are stuck."""
        assert self.recorder is not None and self.db is not None
        sent = {t: self.recorder.submit(t) for t in task_ids}
        capacity = self.opts.daemons * self.opts.workers
        timeout = LEASE_TIMEOUT_S + 10 + 3 * len(task_ids) * self.cluster.delay_ms / 1000 / capacity
        deadline = time.monotonic() + timeout
        missing = {t for t, s in sent.items() if s.entry_id}
        while missing and time.monotonic() < deadline:
            time.sleep(0.25)
            recorded = self.db.last_recorded()
            missing = {t for t in missing if recorded.get(t, 0.0) <= sent[t].ts}
        for task_id in sorted(missing)[:20]:
            self.row.details.setdefault("stuck", []).append(
                f"task {task_id}: a new execute not recorded within {timeout:.1f}s"
            )
        return len(missing) + self._drain_mail()

    def _drain_mail(self, timeout: float = 60.0) -> int:
        outbox, admin = keys.mail_outbox(STREAM), self.admin()
        deadline, streak, why = time.monotonic() + timeout, 0, "no answer"
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                self._read_outbox()
                groups: Any = admin.xinfo_groups(outbox) if self.outbox else []
                group = next((g for g in groups if text(g["name"]) == MAILER_GROUP), None)
                consumers: Any = admin.xinfo_consumers(outbox, MAILER_GROUP) if group else []
            except redis.RedisError as exc:
                why, streak = str(exc), 0
                continue
            for c in consumers:
                name = text(c["name"])
                if int(c["pending"]) and name not in self.cluster.live and name not in self.revived:
                    self.revived.add(name)
                    with self.daemon_lock:
                        self.cluster.start_daemon(name)
            last = self._outbox_last or "0-0"
            read = text(group["last-delivered-id"]) if group else "0-0"
            pending = int(group["pending"]) if group else 0
            drained = pending == 0 and entry_key(read) >= entry_key(last)
            why = f"{pending} pending, read up to {read} of {last}"
            streak = streak + 1 if drained else 0
            if streak >= 3:
                return 0
        self.row.details.setdefault("stuck", []).append(f"mail outbox not drained in {timeout:.0f}s: {why}")
        return 1

    def _collect(self) -> None:
        super()._collect()
        assert self.db is not None and self.sink is not None and self.feeder is not None
        assert self.recorder is not None
        with contextlib.suppress(redis.RedisError):
            self._read_outbox()
        observed = Observed(
            submits=list(self.recorder.submits), audit=self.db.audit(), rows=self.rows,
            duplicate_rows=self.db.duplicate_rows(), links=self.db.links_per_task(), max_items=MAX_ITEMS,
            outbox=dict(self.outbox), mails=self.sink.mails, raises=list(self.feeder.raises),
            kills=list(self.kills), calls=self._calls(), revived=len(self.revived),
        )  # fmt: skip
        result = gh_check(observed)
        self.row.data = result.figures
        self.row.must_be_zero = list(CHECKS)
        for kind, lines in result.details.items():
            self.row.details.setdefault(kind, []).extend(lines)
        if self.feeder.errors:
            self.row.details.setdefault("feeder", []).append(
                f"{self.feeder.errors} errors (executes skipped)"
            )
        self.row.details = {k: v for k, v in self.row.details.items() if v}
        self._dump_data(observed)

    def _dump_data(self, o: Observed) -> None:
        for name, items in (("outbox", [{"id": k, **v} for k, v in o.outbox.items()]), ("mails", o.mails),
                            ("kills", o.kills), ("raises", o.raises),
                            ("audit", [a for audit in o.audit.values() for a in audit])):  # fmt: skip
            with open(self.tmp / f"{name}.jsonl", "w") as out:
                for item in items:
                    data = item if isinstance(item, dict) else dataclasses.asdict(item)
                    out.write(json.dumps(data, default=sorted) + "\n")


def run_class(faults: tuple[str, ...]) -> type[Run]:
    return GoodsHunterRun if "mysql" in faults else Run


def check_faults(faults: tuple[str, ...]) -> str | None:
    """Why these faults cannot run together, or None."""
    bad = [f for f in faults if f in NOT_WITH]
    return f"mysql does not combine with {', '.join(bad)}" if "mysql" in faults and bad else None
