"""GoodsHunter's data path against a real MariaDB/MySQL and a real Redis: rows, timeline, events.

The crawl's items are given directly (the daemon-level flow, crawler and SMTP included, is in
test_daemon_mysql.py): what matters here is what lands in ``items`` / ``task_items`` / the row and the
outbox, including when the same crawl is recorded twice (at-least-once).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from scheduler._proto import crawler_pb2
from scheduler.config.addresses import parse_go_dsn
from scheduler.config.load import load_settings
from scheduler.errors import InvalidTaskError
from scheduler.results.goodshunter import GoodsHunterResults
from scheduler.taskqueue import keys
from scheduler.taskqueue.scripts import Scripts
from scheduler.tasks.mysql_store import MysqlPool, MysqlTaskStore, spec_from_row
from scheduler.tasks.schedule_sync import sync_schedule
from tests.mysql.database import Database

STREAM = keys.DEFAULT_STREAM
OUTBOX = keys.mail_outbox(STREAM)


@pytest.fixture
def db(mysql_database: Database) -> Iterator[Database]:
    mysql_database.reset()
    yield mysql_database


@pytest.fixture
def pool(db: Database) -> Iterator[MysqlPool]:
    p = MysqlPool(parse_go_dsn(db.dsn), size=2)
    yield p
    p.close()


def results(pool: MysqlPool, r: redis.Redis, max_items: int = 300) -> GoodsHunterResults:
    return GoodsHunterResults(pool, Scripts(r), STREAM, max_items)


def item(n: int, price: int) -> crawler_pb2.Item:
    return crawler_pb2.Item(source_id=f"m{n:011d}", title=f"camera <{n}>", price=price,
                            image_url=f"https://img.example/{n}.jpg", item_url=f"https://jp.mercari.com/item/m{n}")  # fmt: skip


def outbox(r: redis.Redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in r.xrange(OUTBOX)]


def crawl(res: GoodsHunterResults, task_id: int, items: list[crawler_pb2.Item]) -> None:
    ctx = res.prepare(task_id)
    assert ctx is not None
    res.record(ctx, items, "")


def test_the_apis_flow_baseline_then_one_new_item_and_one_drop_then_nothing(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    user = db.add_user("hunter@example.com")
    task = db.add_task(user, "camera")
    res = results(pool, r)
    first = [item(3, 9000), item(2, 8000), item(1, 7000)]
    crawl(res, task, first)
    row = db.task(task)
    assert row["baseline_at"] is not None and row["last_run_at"] is not None
    assert [(link["source_id"], link["rank"]) for link in db.links(task)] == [
        ("m00000000003", 1), ("m00000000002", 2), ("m00000000001", 3),
    ]  # fmt: skip
    assert outbox(r) == []  # the baseline notifies nothing
    assert r.hgetall(keys.dedup_hash(task))[b"m00000000002"] == b"8000"

    second = [item(4, 5000), item(3, 9000), item(2, 6500), item(1, 7000)]
    crawl(res, task, second)
    events = outbox(r)
    assert [(e["kind"], e["source_id"], e["price"], e["old_price"]) for e in events] == [
        ("new_item", "m00000000004", "5000", ""),
        ("price_drop", "m00000000002", "6500", "8000"),
    ]
    assert {e["to"] for e in events} == {"hunter@example.com"} and events[0]["keyword"] == "camera"
    prices = {link["source_id"]: link["price"] for link in db.links(task)}
    assert prices["m00000000002"] == 6500 and len(prices) == 4

    crawl(res, task, second)  # the third, identical crawl
    assert len(outbox(r)) == 2


def test_a_crawl_recorded_twice_writes_no_row_and_no_event_twice(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    task = db.add_task(db.add_user("a@example.com"), "lens")
    res = results(pool, r)
    crawl(res, task, [item(1, 1000)])
    again = [item(2, 2000), item(1, 900)]
    crawl(res, task, again)
    crawl(res, task, again)  # a kill -9 after the writes, before the ack: the entry runs again
    assert len(outbox(r)) == 2
    assert len(db.query("SELECT * FROM items")) == 2 and len(db.links(task)) == 2


def test_a_crash_between_the_rows_and_the_dedup_hash_still_mails_once(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    task = db.add_task(db.add_user("a@example.com"), "lens")
    res = results(pool, r)
    crawl(res, task, [item(1, 1000)])
    before = r.hgetall(keys.dedup_hash(task))
    crawl(res, task, [item(2, 2000), item(1, 800)])
    # as if that run had died after its MySQL transaction and before the dedup script
    r.delete(keys.dedup_hash(task), OUTBOX)
    r.hset(keys.dedup_hash(task), mapping=before)  # type: ignore[arg-type]
    crawl(res, task, [item(2, 2000), item(1, 800)])
    assert sorted(e["kind"] for e in outbox(r)) == ["new_item", "price_drop"]
    assert len(db.links(task)) == 2


def test_a_go_schedulers_dedup_hash_is_honoured_no_mail_storm_on_migration(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    task = db.add_task(db.add_user("a@example.com"), "lens")
    db.execute("UPDATE tasks SET baseline_at = NOW() WHERE id = %s", task)  # the Go scheduler's baseline
    r.hset(keys.dedup_hash(task), mapping={f"m{n:011d}": str(1000 * n) for n in (1, 2, 3)})
    crawl(results(pool, r), task, [item(3, 3000), item(2, 2000), item(1, 1000)])
    assert outbox(r) == []
    assert len(db.links(task)) == 3  # the rows are written all the same


def test_items_found_below_a_known_one_are_linked_at_its_time_and_not_mailed(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    task = db.add_task(db.add_user("a@example.com"), "lens")
    res = results(pool, r)
    crawl(res, task, [item(5, 500)])
    known_at = db.links(task)[0]["created_at"]
    crawl(res, task, [item(6, 600), item(5, 500), item(4, 400)])  # 4: deeper, an old listing
    assert [e["source_id"] for e in outbox(r)] == ["m00000000006"]
    times = {link["source_id"]: link["created_at"] for link in db.links(task)}
    assert times["m00000000004"] == known_at and times["m00000000006"] > known_at


def test_links_beyond_max_items_per_task_are_removed_oldest_first_exactly(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    task = db.add_task(db.add_user("a@example.com"), "lens")
    res = results(pool, r, max_items=5)
    crawl(res, task, [item(n, 100 * n) for n in (3, 2, 1)])
    crawl(res, task, [item(n, 100 * n) for n in (8, 7, 6, 5, 4, 3, 2, 1)])  # one batch time, 8 ranks
    kept = [link["source_id"] for link in db.links(task)]
    # the newest 5: equal times are cut by rank, never a whole batch of equal times too many
    assert kept == [f"m{n:011d}" for n in (8, 7, 6, 5, 4)]


def test_an_idle_guests_task_is_stopped_instead_of_crawled(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    guest = db.add_user("guest@example.com", role="guest")
    task = db.add_task(guest, "lens")
    res = results(pool, r)
    r.set(keys.guest_active_key(guest), "1", ex=60)
    assert res.prepare(task) is not None
    r.delete(keys.guest_active_key(guest))
    assert res.prepare(task) is None
    assert db.task(task)["status"] == "stopped"


def test_notifications_off_or_no_address_queue_no_event(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    quiet = db.add_task(db.add_user("a@example.com"), "lens", notify=False)
    res = results(pool, r)
    crawl(res, quiet, [item(1, 100)])
    crawl(res, quiet, [item(2, 200), item(1, 50)])
    assert outbox(r) == []
    assert GoodsHunterResults(pool, Scripts(r), STREAM, 300, mail=False).prepare(quiet) is not None


def test_the_store_reads_rows_as_specs_and_refuses_to_write_them(db: Database, pool: MysqlPool) -> None:
    user = db.add_user("a@example.com")
    running = db.add_task(user, "camera", min_price=100, max_price=900, platform=2)
    stopped = db.add_task(user, "lens", status="stopped")
    broken = db.add_task(user, "bad", platform=0)
    store = MysqlTaskStore(pool)
    specs = store.get_many([running, stopped, broken, 999])
    spec = specs[running]
    assert spec is not None
    assert (spec.keyword, spec.platform, spec.min_price, spec.max_price, spec.sort, spec.order) == (
        "camera", "yahoo_auction", 100, 900, "created_time", "desc",
    )  # fmt: skip
    assert spec.only_on_sale and spec.status == "running"
    assert specs[stopped] is not None and specs[stopped].status == "stopped"  # type: ignore[union-attr]
    assert specs[broken] is None and specs[999] is None
    assert store.statuses([stopped, 999]) == {
        stopped: ("stopped", specs[stopped].status_stamp),
        999: (None, 0),
    }  # type: ignore[union-attr]
    assert store.running_ids() == [running, broken]
    assert store.owns_status is False
    with pytest.raises(InvalidTaskError, match="through its API"):
        store.put_many([spec])
    with pytest.raises(InvalidTaskError):
        spec_from_row({"id": 1, "keyword": "x", "platform": 1, "sort_by": 9, "sort_order": 0,
                       "status": "running", "min_price": 0, "max_price": 0, "updated_at": None})  # fmt: skip


def test_the_schedule_follows_the_running_rows(db: Database, pool: MysqlPool, r: redis.Redis) -> None:
    user = db.add_user("a@example.com")
    a, b = db.add_task(user, "a"), db.add_task(user, "b")
    store = MysqlTaskStore(pool)
    assert sync_schedule(store, r, STREAM, 300.0) == (2, 0)
    assert sync_schedule(store, r, STREAM, 300.0) == (0, 0)  # idempotent: any daemon may run it
    db.execute("UPDATE tasks SET status = 'stopped' WHERE id = %s", b)
    c = db.add_task(user, "c")
    assert sync_schedule(store, r, STREAM, 300.0) == (1, 1)
    assert sorted(int(t) for t in r.zrange(keys.schedule_set(STREAM), 0, -1)) == [a, c]
    assert r.hget(keys.intervals_hash(STREAM), str(c)) == b"300000"


def test_a_sync_on_a_stale_read_never_removes_what_another_sync_added(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    """Two daemons sync at once: one read the rows before the API inserted a task, the other read them
    after and scheduled it. The first must not take the task off the schedule (it did: a new task waited
    a whole sync period for its first run)."""
    user = db.add_user("a@example.com")
    store = MysqlTaskStore(pool)

    class ReadBeforeTheInsert(MysqlTaskStore):
        def running(self) -> list[tuple[int, float]]:
            db.add_task(user, "new")  # the API inserts a row while this daemon's read is on its way ...
            sync_schedule(store, r, STREAM, 300.0)  # ... and another daemon's sync schedules it
            return []  # what this daemon read

    assert sync_schedule(ReadBeforeTheInsert(pool), r, STREAM, 300.0) == (0, 0)
    assert r.zcard(keys.schedule_set(STREAM)) == 1


def refusal(dsn: str) -> str | None:
    """What start-up says of this DSN (None: it may start)."""
    from scheduler.daemon.datapath import DataPath
    from scheduler.metrics import Metrics

    settings = load_settings(env={"APP_TASK_STORE": "mysql", "APP_METRICS_PORT": "0", "MYSQL_DSN": dsn})
    return DataPath(settings, redis.Redis(), Metrics()).check()


def test_a_wrong_mysql_password_is_one_line_at_start(db: Database) -> None:
    t = parse_go_dsn(db.dsn)
    reason = refusal(f"nosuchuser:wrong-pw@tcp({t.host}:{t.port})/{t.database}")
    assert reason is not None and "refused the user or password" in reason and "\n" not in reason
    assert "wrong-pw" not in reason
    assert "unknown database" in (refusal(f"{t.user}@tcp({t.host}:{t.port})/no_such_db_here") or "")


# -- review findings --------------------------------------------------------------------------------------


def test_a_crawl_whose_entry_was_reclaimed_merges_nothing(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    """A daemon frozen past its lease, its entry reclaimed and crawled by another, must not rewind the
    dedup hash to its older prices (the next crawl would mail the same drop again)."""
    from scheduler.taskqueue import Consumer, Producer

    task = db.add_task(db.add_user("a@example.com"), "lens")
    res = GoodsHunterResults(pool, Scripts(r), STREAM, 300, consumer="frozen")
    crawl(res, task, [item(1, 1000)])
    Producer(r).submit_task(task, "periodic")
    frozen = Consumer(r, None, STREAM, keys.DEFAULT_GROUP, "frozen")
    [entry] = frozen.read(1, block_ms=100)
    r.hset(keys.dedup_hash(task), "m00000000001", "800")  # the other daemon's crawl, merged and mailed
    r.xclaim(STREAM, keys.DEFAULT_GROUP, "other", 0, [entry.id])  # ... after it reclaimed the entry
    ctx = res.prepare(task)
    assert ctx is not None
    merged = res.record(ctx, [item(1, 1000)], entry.id)
    assert not merged.held
    assert r.hget(keys.dedup_hash(task), "m00000000001") == b"800" and outbox(r) == []


def test_a_dedup_hash_lost_after_the_baseline_is_a_new_baseline_not_a_mail_storm(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    task = db.add_task(db.add_user("a@example.com"), "lens")
    res = results(pool, r)
    crawl(res, task, [item(n, 100 * n) for n in (3, 2, 1)])
    r.delete(keys.dedup_hash(task))  # evicted, flushed, restored from an old backup...
    crawl(res, task, [item(n, 100 * n) for n in (4, 3, 2, 1)])
    assert outbox(r) == []
    assert len(r.hgetall(keys.dedup_hash(task))) == 4  # remembered again: the next crawl compares
    crawl(res, task, [item(n, 100 * n) for n in (5, 4, 3, 2, 1)])
    assert [e["source_id"] for e in outbox(r)] == ["m00000000005"]


def test_source_ids_are_compared_as_the_database_compares_them(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    task = db.add_task(db.add_user("a@example.com"), "lens")
    res = results(pool, r)
    odd = [
        crawler_pb2.Item(source_id=" AbC ", title="x", price=10),
        crawler_pb2.Item(source_id="abc", price=9),
    ]
    crawl(res, task, odd)  # one item (trimmed; case aside), never a KeyError that poisons the task
    assert [link["source_id"] for link in db.links(task)] == ["AbC"]
    crawl(res, task, [crawler_pb2.Item(source_id="ABC", title="x", price=10)])
    assert len(db.query("SELECT id FROM items")) == 1


def test_a_row_stopped_since_its_entry_was_read_is_not_crawled(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    task = db.add_task(db.add_user("a@example.com"), "lens")
    db.execute("UPDATE tasks SET status = 'stopped' WHERE id = %s", task)
    assert results(pool, r).prepare(task) is None


def test_datetimes_follow_the_dsns_loc_utc_by_default_as_the_go_driver(db: Database) -> None:
    from datetime import UTC, datetime

    utc = MysqlPool(parse_go_dsn(db.dsn.replace("loc=Local", "loc=UTC")))
    default = MysqlPool(parse_go_dsn(db.dsn.split("?")[0]))
    local = MysqlPool(parse_go_dsn(db.dsn))
    now = datetime.now(UTC).replace(tzinfo=None)
    assert abs((utc.now() - now).total_seconds()) < 5 and abs((default.now() - now).total_seconds()) < 5
    assert abs(local.timestamp(local.now()) - utc.timestamp(utc.now())) < 5  # the same instant either way


def test_a_stale_pooled_connection_is_replaced_not_an_error(db: Database, pool: MysqlPool) -> None:
    store = MysqlTaskStore(pool)
    store.query("SELECT 1")
    [row] = store.query("SELECT CONNECTION_ID() AS id")
    db.execute(f"KILL {int(row['id'])}")  # MySQL restarted, or wait_timeout closed it
    assert store.query("SELECT 1 AS one") == [{"one": 1}]


def test_a_non_ascii_mysql_password_is_refused_in_one_line_never_a_traceback(db: Database) -> None:
    t = parse_go_dsn(db.dsn)
    reason = refusal(f"nosuchuser:pa€ss@tcp({t.host}:{t.port})/{t.database}")
    assert reason is not None and "refused the user or password" in reason and "€" not in reason


def test_a_refused_redis_write_is_a_response_error_the_runner_retries_with_back_off(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    """WRONGTYPE (a leftover key of another type), OOM...: not a lost connection, so not 'recover at once'
    (a hot loop that never reaches max_retry); the runner turns it into a counted, backed-off retry."""
    from scheduler.config.load import load_settings as settings_of
    from scheduler.daemon.outcomes import Retry
    from scheduler.daemon.runner import TaskRunner

    task = db.add_task(db.add_user("a@example.com"), "lens")
    r.set(keys.dedup_hash(task), "not a hash")
    res = results(pool, r)
    ctx = res.prepare(task)
    assert ctx is not None
    with pytest.raises(redis.ResponseError):
        res.record(ctx, [item(1, 100)], "")
    runner = TaskRunner.__new__(TaskRunner)
    runner.settings = settings_of(env={})
    from scheduler.metrics import Metrics

    runner.metrics = Metrics()
    outcome = runner._store_failed(0, redis.ResponseError("WRONGTYPE"), 0.1)
    assert isinstance(outcome, Retry) and outcome.delay_s > 0 and outcome.count_retry


def test_the_outbox_trim_keeps_every_unmailed_event(db: Database, r: redis.Redis) -> None:
    from scheduler.daemon import datapath
    from scheduler.metrics import Metrics

    settings = load_settings(env={"APP_TASK_STORE": "mysql", "MYSQL_DSN": db.dsn, "APP_METRICS_PORT": "0",
                                  "EMAIL_SMTP_HOST": "127.0.0.1", "EMAIL_FROM_EMAIL": "a@example.com"})  # fmt: skip
    data = datapath.DataPath(settings, r, Metrics())
    r.xgroup_create(OUTBOX, "mailer", id="0", mkstream=True)
    for n in range(1500):
        r.xadd(OUTBOX, {"kind": "new_item", "n": str(n)})
    r.xreadgroup("mailer", "m", {OUTBOX: ">"}, count=1200)  # 1,200 read, 300 not yet
    data.trim_outbox()
    assert r.xlen(OUTBOX) == 1500  # nothing acknowledged yet: nothing removed
    ids = [entry_id for entry_id, _ in r.xrange(OUTBOX, count=1200)]
    r.xack(OUTBOX, "mailer", *ids)
    data.trim_outbox()
    left = r.xrange(OUTBOX)
    assert 300 <= len(left) < 1500 and left[-1][1][b"n"] == b"1499"
    assert {int(f[b"n"]) for _, f in left} >= set(range(1200, 1500))  # every unread one is still there
    data.pool.close()


# -- second review ----------------------------------------------------------------------------------------


def test_after_an_empty_first_crawl_the_first_items_are_mailed(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    """No dedup hash is no lost hash when no crawl ever linked an item: an alert for a rare item."""
    task = db.add_task(db.add_user("a@example.com"), "rare lens")
    res = results(pool, r)
    crawl(res, task, [])
    crawl(res, task, [item(1, 100)])
    assert [e["kind"] for e in outbox(r)] == ["new_item"]


def test_a_connection_lost_mid_transaction_is_repeated_in_place(
    db: Database, pool: MysqlPool, r: redis.Redis
) -> None:
    task = db.add_task(db.add_user("a@example.com"), "lens")
    res = results(pool, r)
    crawl(res, task, [item(1, 100)])
    original = res._write_rows
    calls = []

    def dying(conn, *args):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            with conn.cursor() as cur:
                cur.execute("SELECT CONNECTION_ID()")
                (conn_id,) = cur.fetchone()
            db.execute(f"KILL {int(conn_id)}")  # the server drops the connection mid-transaction
        return original(conn, *args)

    res._write_rows = dying  # type: ignore[method-assign]
    crawl(res, task, [item(2, 200), item(1, 100)])
    assert len(calls) == 2 and [e["kind"] for e in outbox(r)] == ["new_item"]


def test_loc_local_follows_daylight_saving_on_the_values_date(db: Database) -> None:
    from datetime import datetime

    local = MysqlPool(parse_go_dsn(db.dsn))  # loc=Local
    july, january = datetime(2026, 7, 1, 12), datetime(2026, 1, 1, 12)
    assert local.timestamp(july) == july.timestamp() and local.timestamp(january) == january.timestamp()


def test_a_stop_while_the_database_is_away_applies_and_never_raises(r: redis.Redis) -> None:
    from scheduler.config.addresses import MysqlTarget
    from scheduler.daemon.leases import Running
    from scheduler.daemon.outcomes import Skip
    from scheduler.daemon.runner import TaskRunner
    from scheduler.metrics import Metrics
    from scheduler.taskqueue import Consumer, Producer
    from scheduler.tasks.lifecycle import Lifecycle

    away = MysqlTaskStore(
        MysqlPool(MysqlTarget("root", "", "127.0.0.1", 1, None, "gh", {}), connect_timeout=1)
    )
    settings = load_settings(env={})
    lifecycle = Lifecycle(settings, r, registry=away)
    runner = TaskRunner(settings, None, None, Metrics(), lifecycle)  # type: ignore[arg-type]
    Producer(r).stop_task(7, "user_stop")
    [msg] = Consumer(r, None, STREAM, keys.DEFAULT_GROUP, "c").read(1, block_ms=100)
    assert runner.run(Running(msg), None) == Skip("stop")
    assert runner.metrics.stops._value.get() == 1
