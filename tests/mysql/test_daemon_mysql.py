"""The daemon on ``app.task_store = mysql``, as a real GoodsHunter runs it: rows inserted as the API
inserts them, executes XADDed as the Go API sends them, the fake crawler, MariaDB and a real SMTP sink."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis

from crawler_stub import CrawlerStub
from scheduler.config.load import load_settings
from scheduler.daemon.app import Daemon
from scheduler.devtools.redis_server import RedisServer
from scheduler.taskqueue import Producer, keys
from tests.e2e.support import FAST_ENV, pending_count, statuses, wait_until
from tests.mysql.database import Database
from tests.smtp_sink import SmtpSink

DIE_AFTER_RECORD = Path(__file__).with_name("die_after_record.py")


@pytest.fixture
def db(mysql_database: Database) -> Iterator[Database]:
    mysql_database.reset()
    yield mysql_database


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture
def daemon(
    redis_server: RedisServer, r: redis.Redis, crawler_stub: CrawlerStub, db: Database, sink: SmtpSink
) -> Iterator[Daemon]:
    settings = load_settings(
        env={
            "REDIS_URL": redis_server.url,
            "APP_CRAWLER_GRPC_ADDR": crawler_stub.address,
            "APP_CONSUMER_NAME": "mysql-inproc",
            "APP_METRICS_PORT": "0",
            "APP_WORKER_POOL_SIZE": "4",
            "APP_TASK_STORE": "mysql",
            "MYSQL_DSN": db.dsn,
            "EMAIL_SMTP_HOST": "127.0.0.1",
            "EMAIL_SMTP_PORT": str(sink.port),
            "EMAIL_FROM_EMAIL": "hunter@goodshunter.example",
        }
    )
    d = Daemon(settings, handle_signals=False)
    thread = threading.Thread(target=d.run)
    thread.start()
    assert d.started.wait(10)
    yield d
    d.request_stop()
    thread.join(30)
    assert not thread.is_alive()


def crawled(stub: CrawlerStub, task: int) -> int:
    return sum(1 for c in stub.calls if c["task_id"] == str(task) and c["code"] == "OK")


def test_the_go_apis_flow_rows_items_baseline_then_exactly_one_mail_per_event(
    daemon: Daemon, db: Database, r: redis.Redis, crawler_stub: CrawlerStub, sink: SmtpSink
) -> None:
    user = db.add_user("buyer@example.com")
    task = db.add_task(user, "film camera")
    producer = Producer(r)
    producer.submit_task(task, "user_create")  # the API: INSERT the row, then XADD an execute
    wait_until(lambda: db.task(task)["last_run_at"] is not None, 10, what="first crawl recorded")
    links = db.links(task)
    assert len(links) == 5 and db.task(task)["baseline_at"] is not None
    assert statuses(r, [task]) == {task: "success"}
    assert not sink.wait(1, timeout=1.0)  # the baseline mails nothing

    # one known item was dearer before (as if its price had dropped since): the next crawl has one new
    # item (the fake crawler's window moves by one per call) and that cheaper one
    cheaper = links[2]
    r.hset(keys.dedup_hash(task), cheaper["source_id"], cheaper["price"] + 500)
    producer.submit_task(task, "user_create")
    assert sink.wait(2, timeout=10)
    assert not sink.wait(3, timeout=1.5), [str(m["Subject"]) for m in sink.messages]
    subjects = sorted(str(m["Subject"]) for m in sink.messages)
    assert len(subjects) == 2 and "New item" in subjects[0] and "Price drop" in subjects[1]
    drop = next(m for m in sink.messages if "Price drop" in str(m["Subject"]))
    body = drop.get_body(("html",))
    assert body is not None
    html = body.get_content()
    assert f"{cheaper['price'] + 500:,}" in html and f"{cheaper['price']:,}" in html
    assert {str(m["To"]) for m in sink.messages} == {"buyer@example.com"}
    wait_until(lambda: daemon.metrics.mails_sent.labels("price_drop")._value.get() == 1, 5)

    producer.submit_task(task, "user_create")  # the window moves by one again: one new item, one mail
    assert sink.wait(3, timeout=10)
    assert not sink.wait(4, timeout=1.5)
    assert len(db.links(task)) == 7 and pending_count(r) == 0


def test_a_stopped_or_deleted_row_is_not_crawled_and_a_go_stop_message_works(
    daemon: Daemon, db: Database, r: redis.Redis, crawler_stub: CrawlerStub
) -> None:
    user = db.add_user("buyer@example.com")
    stopped = db.add_task(user, "stopped camera", status="stopped")
    producer = Producer(r)
    producer.submit_many([stopped, 4040], "user_create")  # a stopped row, and no row at all
    wait_until(lambda: daemon.metrics.tasks_processed.labels("skipped")._value.get() == 2, 10)
    assert crawled(crawler_stub, stopped) == 0 and db.task(stopped)["status"] == "stopped"

    running = db.add_task(user, "slow camera;delay=3000")
    producer.submit_task(running, "user_create")
    wait_until(lambda: crawler_stub.active_calls == 1, 5, what="the crawl in flight")
    db.execute("UPDATE tasks SET status = 'stopped' WHERE id = %s", running)  # the API stops it ...
    producer.stop_task(
        running, "user_stop"
    )  # ... and sends the Go stop message: the crawl in flight is cancelled
    wait_until(lambda: daemon.metrics.tasks_processed.labels("cancelled")._value.get() == 1, 10)
    assert db.task(running)["last_run_at"] is None


def test_running_rows_are_the_periodic_schedule(
    daemon: Daemon, db: Database, r: redis.Redis, crawler_stub: CrawlerStub
) -> None:
    user = db.add_user("buyer@example.com")
    # one statement: the daemon's own sync may run at any moment and must see the row whole
    overdue = db.add_task(user, "scheduled camera", last_run_at=datetime.now() - timedelta(days=1))
    fresh = db.add_task(user, "new camera")  # the API's own execute makes its first run
    daemon.data.sync()  # type: ignore[union-attr]  # (the daemon runs it every min(30 s, period))
    wait_until(lambda: crawled(crawler_stub, overdue) == 1, 10, what="the overdue task's run, at once")
    schedule = keys.schedule_set(keys.DEFAULT_STREAM)
    due = r.zscore(schedule, str(fresh))
    assert due is not None and due > (float(r.time()[0]) + 250) * 1000  # a period after its creation
    assert crawled(crawler_stub, fresh) == 0


def test_a_kill_9_after_the_database_writes_before_the_ack_duplicates_no_row_and_no_mail(
    tmp_path: Path, redis_server: RedisServer, r: redis.Redis, crawler_stub: CrawlerStub, db: Database,
    sink: SmtpSink,
) -> None:  # fmt: skip
    env = {
        **os.environ, **FAST_ENV, "REDIS_URL": redis_server.url, "APP_CRAWLER_GRPC_ADDR": crawler_stub.address,
        "APP_TASK_STORE": "mysql", "MYSQL_DSN": db.dsn, "EMAIL_SMTP_HOST": "127.0.0.1",
        "EMAIL_SMTP_PORT": str(sink.port), "EMAIL_FROM_EMAIL": "hunter@goodshunter.example",
    }  # fmt: skip
    user = db.add_user("buyer@example.com")
    task = db.add_task(user, "film camera")
    log = tmp_path / "daemon.log"

    def start(**more: str) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen([sys.executable, str(DIE_AFTER_RECORD), "run", "--consumer", "d1"],
                                    stdout=out, stderr=subprocess.STDOUT, env={**env, **more})  # fmt: skip

    first = start(DIE_AFTER_RECORD="2")
    try:
        producer = Producer(r)
        producer.submit_task(task, "user_create")
        wait_until(lambda: db.task(task)["baseline_at"] is not None, 15, what="the baseline crawl")
        cheaper = db.links(task)[2]
        r.hset(keys.dedup_hash(task), cheaper["source_id"], cheaper["price"] + 500)
        producer.submit_task(task, "user_create")
        assert first.wait(15) == -signal.SIGKILL  # died after writing the rows and events, before the ack
    finally:
        if first.poll() is None:
            first.kill()
    assert pending_count(r) == 1
    second = start()  # a quick restart under the same name resumes its own pending entry
    try:
        wait_until(lambda: pending_count(r) == 0 and crawled(crawler_stub, task) == 3, 20, what="the re-run")
        assert sink.wait(3, timeout=10)
        assert not sink.wait(4, timeout=2.0), [str(m["Subject"]) for m in sink.messages]
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    # the re-run found the second crawl's new item and drop already merged: only the item that appeared
    # since (the fake crawler's window moved again) is news
    kinds = sorted(str(m["Subject"]).split(":")[0] for m in sink.messages)
    assert kinds == ["[GoodsHunter] New item", "[GoodsHunter] New item", "[GoodsHunter] Price drop"]
    assert len({str(m["Message-ID"]) for m in sink.messages}) == 3
    assert len(db.links(task)) == 7
    assert len(db.query("SELECT source_id FROM items")) == 7


def test_a_stop_whose_row_runs_again_leaves_the_re_enabled_run_alone(
    daemon: Daemon, db: Database, r: redis.Redis, crawler_stub: CrawlerStub
) -> None:
    user = db.add_user("buyer@example.com")
    task = db.add_task(user, "camera;delay=1500")
    producer = Producer(r)
    producer.submit_task(task, "user_create")  # the user pressed stop, then start: the row is running
    wait_until(lambda: crawler_stub.active_calls == 1, 5, what="the re-enabled run in flight")
    producer.stop_task(task, "user_stop")  # the stop message, processed late
    wait_until(lambda: daemon.metrics.tasks_processed.labels("stop")._value.get() == 1, 5)
    assert r.get(keys.run_lock_key(keys.DEFAULT_STREAM, task)) is not None  # the run keeps its lock
    wait_until(lambda: db.task(task)["last_run_at"] is not None, 10, what="the run recorded, not cancelled")
    assert daemon.metrics.tasks_processed.labels("cancelled")._value.get() == 0


def test_a_stalled_task_database_never_holds_the_leases_back(
    redis_server: RedisServer, r: redis.Redis, crawler_stub: CrawlerStub, db: Database
) -> None:
    """The stopped-row backstop queries MySQL; on the lease thread, a database stalled past the lease (a
    metadata lock, a failover) let other daemons reclaim every entry still being crawled."""
    settings = load_settings(env={
        "REDIS_URL": redis_server.url, "APP_CRAWLER_GRPC_ADDR": crawler_stub.address,
        "APP_CONSUMER_NAME": "stalled", "APP_METRICS_PORT": "0", "APP_WORKER_POOL_SIZE": "2",
        "APP_TASK_STORE": "mysql", "MYSQL_DSN": db.dsn, "APP_LEASE_TIMEOUT": "3s", "APP_RECLAIM_INTERVAL": "1s",
    })  # fmt: skip
    d = Daemon(settings, handle_signals=False)
    thread = threading.Thread(target=d.run)
    thread.start()
    try:
        assert d.started.wait(10)
        task = db.add_task(db.add_user("buyer@example.com"), "long camera;delay=7000")
        Producer(r).submit_task(task, "user_create")
        wait_until(lambda: crawler_stub.active_calls == 1, 5, what="the crawl in flight")
        locker = db._connect(db.name)
        with locker.cursor() as cur:
            cur.execute("LOCK TABLES tasks WRITE")  # every read of tasks waits
            worst = 0
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                [entry] = r.xpending_range(keys.DEFAULT_STREAM, keys.DEFAULT_GROUP, "-", "+", 10)
                worst = max(worst, int(entry["time_since_delivered"]))
                time.sleep(0.1)
            cur.execute("UNLOCK TABLES")
        locker.close()
        assert worst < 3000, f"lease not renewed for {worst} ms while the database stalled"
    finally:
        d.request_stop(force=True)
        thread.join(30)
