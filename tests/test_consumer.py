import json
import logging
import subprocess
import sys
import threading
import time

import pytest
import redis

from scheduler.taskqueue import Consumer, Producer, StreamMessage
from scheduler.taskqueue.keys import DEFAULT_GROUP, DEFAULT_STREAM

S, G = DEFAULT_STREAM, DEFAULT_GROUP
GO_ENTRY = (
    '{"task_id":42,"action":"execute","timestamp":"2025-12-20T03:03:55.123456789+09:00",'
    '"retry":0,"source":"user_create"}'
)


def consumer(client: redis.Redis, name: str = "c1", **kwargs: object) -> Consumer:
    c = Consumer(client, None, S, G, name, **kwargs)  # type: ignore[arg-type]
    c.ensure_group()
    return c


def dlq(client: redis.Redis) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode("utf-8", "replace") for k, v in f.items()} for _, f in client.xrange(f"{S}:dlq")
    ]


def test_reads_what_go_writes(r: redis.Redis) -> None:
    c = consumer(r)
    entry_id = r.xadd(S, {"data": GO_ENTRY}).decode()
    [msg] = c.read(10, block_ms=100)
    assert msg.id == entry_id
    assert (msg.message.task_id, msg.message.action, msg.message.retry) == (42, "execute", 0)
    assert msg.message.timestamp.isoformat() == "2025-12-20T03:03:55.123456+09:00"
    assert c.ack(msg.id) == 1 and c.ack(msg.id) == 0
    assert c.pending_summary().count == 0


POISON: list[dict[str, bytes]] = [
    {"other": b"x"},
    {"data": b"not json"},
    {"data": b"[1,2]"},
    {"data": b'{"task_id":0,"action":"execute"}'},
    {"data": b'{"task_id":-1,"action":"execute"}'},
    {"data": b'{"task_id":18446744073709551616,"action":"execute"}'},
    {"data": b'{"task_id":"42","action":"execute"}'},
    {"data": b'{"task_id":true,"action":"execute"}'},
    {"data": b'{"task_id":1e309,"action":"execute"}'},
    {"data": b'{"task_id":' + b"7" * 5000 + b',"action":"execute"}'},
    {"data": b"[" * 100_000 + b"]" * 100_000},
    {"data": b'{"task_id":1,"action":"execute","x":"' + b"y" * (10 << 20) + b'"}'},
    {"data": b'{"task_id":1,"action":"\xc3\x28"}'},
    {"data": b'{"task_id":1,"action":"launch"}'},
    {"data": b'{"task_id":NaN,"action":"execute"}'},
]


def test_each_poison_kind_dead_lettered_once_and_reading_goes_on(r: redis.Redis) -> None:
    dead: list[str] = []
    c = consumer(r, count_dead_letter=dead.append)
    poison_ids = [r.xadd(S, fields).decode() for fields in POISON]  # type: ignore[arg-type]
    good_id = r.xadd(S, {"data": GO_ENTRY}).decode()
    got: list[StreamMessage] = []
    for _ in range(5):
        got += c.read(4, block_ms=50)
    assert [m.id for m in got] == [good_id]
    letters = dlq(r)
    assert [letter["original_id"] for letter in letters] == poison_ids
    assert len(dead) == len(poison_ids)  # each counted once, by its reason's category
    for letter in letters:
        assert letter["reason"] and letter["failed_at"].endswith("Z")
        assert len(letter["payload"]) <= 64 * 1024 * 4
    reasons = [letter["reason"].split(":")[0] for letter in letters]
    assert reasons[:4] == ["missing_data", "bad_json", "not_object", "task_id_range"]
    assert "oversized" in reasons and "bad_utf8" in reasons and "number_range" in reasons
    assert c.pending_summary().count == 1  # only the good one, until acked
    # a second consumer reading the same stream sees no poison again
    assert consumer(r, "c2").read(10, block_ms=50) == []
    assert len(dlq(r)) == len(POISON)


def test_requeue_race_makes_exactly_one_new_entry(r: redis.Redis) -> None:
    producer = Producer(r)
    for task_id in range(1, 51):
        producer.submit_task(task_id, "user_create")
    a, b = consumer(r, "a"), consumer(r, "b")
    mine = a.read(50, block_ms=100)
    stolen = b.reclaim(min_idle_ms=0, count=50)  # b now believes it owns the same entries
    assert [m.id for m in stolen] == [m.id for m in mine]
    results: list[bool] = []
    barrier = threading.Barrier(2)

    def end_all(c: Consumer, msgs: list[StreamMessage], dead_letter: bool) -> None:
        barrier.wait()
        for m in msgs:
            results.append(c.dead_letter(m, "race") if dead_letter else c.requeue(m))

    threads = [
        threading.Thread(target=end_all, args=(a, mine, False)),
        threading.Thread(target=end_all, args=(b, stolen, True)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 50 and results.count(False) == 50
    requeued = r.xlen(S) - 50
    assert requeued + len(dlq(r)) == 50
    assert a.pending_summary().count == 0


def test_requeue_increments_retry_and_delay_is_held_in_redis(r: redis.Redis) -> None:
    c = consumer(r)
    Producer(r).submit_task(9, "periodic")
    [msg] = c.read(1, block_ms=100)
    assert c.requeue(msg, delay_s=0.3)
    assert c.read(1, block_ms=50) == []
    assert r.zcard(f"{S}:delayed") == 1
    moved, wait = c.move_due()
    assert moved == 0 and wait is not None and 0 < wait <= 0.3
    time.sleep(wait + 0.02)
    assert c.move_due() == (1, None)
    [again] = c.read(1, block_ms=100)
    assert (again.message.task_id, again.message.retry, again.message.source) == (9, 1, "periodic")
    assert again.message.timestamp == msg.message.timestamp


def test_a_moved_retry_is_logged_with_its_parked_and_new_entry_ids(
    r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    c = consumer(r)
    Producer(r).submit_task(11, "periodic")
    [msg] = c.read(1, block_ms=100)
    assert c.requeue(msg, delay_s=0.01)
    time.sleep(0.05)
    with caplog.at_level(logging.INFO):
        assert c.move_due() == (1, None)
    [again] = c.read(1, block_ms=100)
    [line] = [rec for rec in caplog.records if rec.getMessage() == "due retry moved into the stream"]
    assert (line.parked_entry_id, line.entry_id, line.task_id) == (msg.id, again.id, 11)
    assert again.id != msg.id


def test_dead_letter_payload_has_retry_incremented(r: redis.Redis) -> None:
    c = consumer(r)
    r.xadd(S, {"data": GO_ENTRY})
    [msg] = c.read(1, block_ms=100)
    assert c.dead_letter(msg, "permanent: INVALID_ARGUMENT")
    # sent again (a lost reply): the same answer, nothing written twice; another consumer gets a refusal
    assert c.dead_letter(msg, "again")
    assert not consumer(r, "c2").dead_letter(msg, "zombie")
    [letter] = dlq(r)
    assert letter["original_id"] == msg.id and letter["reason"] == "permanent: INVALID_ARGUMENT"
    assert json.loads(letter["payload"])["retry"] == 1


KILLED_READER = """
import os, redis, sys
from scheduler.taskqueue import Consumer
c = Consumer(redis.Redis(port=int(sys.argv[1])), None, sys.argv[2], sys.argv[3], sys.argv[4])
c.ensure_group()
got = c.read(int(sys.argv[5]), block_ms=1000)
print(len(got), flush=True)
os.kill(os.getpid(), 9)
"""


def test_killed_consumer_resumes_own_pending_or_is_reclaimed_after_min_idle(r: redis.Redis) -> None:
    port = r.connection_pool.connection_kwargs["port"]
    Producer(r).submit_many(range(1, 11))
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_READER, str(port), S, G, "dead-1", "4"], capture_output=True, text=True
    )
    assert proc.returncode == -9 and proc.stdout.strip() == "4"
    other = consumer(r, "other")
    assert other.reclaim(min_idle_ms=1500) == []  # too early: never before min_idle
    # a new process with the same name gets its own four back first, then new work
    same = consumer(r, "dead-1")
    resumed = same.read(10, block_ms=100)
    assert [m.message.task_id for m in resumed] == [1, 2, 3, 4]
    assert same.read(10, block_ms=100)[0].message.task_id == 5

    proc = subprocess.run(
        [sys.executable, "-c", KILLED_READER, str(port), S, G, "dead-2", "3"], capture_output=True, text=True
    )
    assert proc.stdout.strip() == "0"  # dead-1 holds everything; nothing new for dead-2


def test_reclaim_only_after_min_idle(any_r: redis.Redis) -> None:
    Producer(any_r).submit_many(range(1, 4))
    dead, alive = consumer(any_r, "dead"), consumer(any_r, "alive")
    assert len(dead.read(3, block_ms=100)) == 3
    assert alive.reclaim(min_idle_ms=400) == []
    time.sleep(0.45)
    assert [m.message.task_id for m in alive.reclaim(min_idle_ms=400)] == [1, 2, 3]
    assert alive.pending_summary().consumers == {"alive": 3}


def test_extend_keeps_lease_and_never_steals_back(any_r: redis.Redis) -> None:
    Producer(any_r).submit_many([1, 2])
    worker, other = consumer(any_r, "worker"), consumer(any_r, "other")
    msgs = worker.read(2, block_ms=100)
    for _ in range(3):
        time.sleep(0.15)
        assert worker.extend(m.id for m in msgs) == [m.id for m in msgs]
    assert other.reclaim(min_idle_ms=300) == []  # renewed leases are never idle that long
    rows = any_r.xpending_range(S, G, "-", "+", 10)
    assert [row["times_delivered"] for row in rows] == [1, 1]  # renewals count no delivery
    time.sleep(0.35)
    [taken] = other.reclaim(min_idle_ms=300, count=1)
    assert worker.extend(m.id for m in msgs) == [msgs[1].id]  # the reclaimed one is not stolen back
    assert any_r.xpending_range(S, G, taken.id, taken.id, 1)[0]["consumer"] == b"other"


def test_delivery_cap_dead_letters_crash_loop(any_r: redis.Redis) -> None:
    Producer(any_r).submit_task(77)
    first = consumer(any_r, "a", max_deliveries=3)
    assert len(first.read(1, block_ms=100)) == 1  # delivery 1
    for _name in ("b", "c"):  # deliveries 2 and 3 by reclaim
        time.sleep(0.06)
        assert len(consumer(any_r, _name, max_deliveries=3).reclaim(min_idle_ms=50)) == 1
    time.sleep(0.06)
    assert consumer(any_r, "d", max_deliveries=3).reclaim(min_idle_ms=50) == []  # delivery 4 > cap
    [letter] = dlq(any_r)
    assert letter["reason"].startswith("max_deliveries")
    assert consumer(any_r, "e").pending_summary().count == 0


def test_delivery_cap_on_resume_of_own_pending(r: redis.Redis) -> None:
    Producer(r).submit_task(5)
    consumer(r, "crashy").read(1, block_ms=100)
    # a restart re-reads it (delivery 2); the next restart would be delivery 3 > cap: dead-lettered
    assert len(consumer(r, "crashy", max_deliveries=2).read(1, block_ms=10)) == 1
    assert consumer(r, "crashy", max_deliveries=2).read(1, block_ms=10) == []
    assert dlq(r)[0]["reason"].startswith("max_deliveries")


def test_payload_lost_entry_dead_lettered_not_retried(any_r: redis.Redis) -> None:
    ids = Producer(any_r).submit_many([1, 2])
    owner = consumer(any_r, "owner")
    owner.read(2, block_ms=100)
    any_r.xdel(S, ids[0])
    time.sleep(0.06)
    rescuer = consumer(any_r, "rescuer")
    got = rescuer.reclaim(min_idle_ms=50)
    assert [m.message.task_id for m in got] == [2]
    [letter] = dlq(any_r)
    assert letter["original_id"] == ids[0] and letter["reason"].startswith("payload_lost")
    assert [row["message_id"].decode() for row in any_r.xpending_range(S, G, "-", "+", 10)] == [ids[1]]


def test_payload_lost_on_resume(r: redis.Redis) -> None:
    ids = Producer(r).submit_many([1, 2])
    consumer(r, "x").read(2, block_ms=100)
    r.xdel(S, ids[1])
    assert [m.id for m in consumer(r, "x").read(5, block_ms=10)] == [ids[0]]
    assert dlq(r)[0]["original_id"] == ids[1]


def test_trim_with_backlog_larger_than_cap_loses_nothing_unacked(any_r: redis.Redis) -> None:
    producer = Producer(any_r)
    ids = producer.submit_many(range(1, 3001))
    c = consumer(any_r, "c")
    slow = Consumer(any_r, None, S, "lagging-group", "l")
    slow.ensure_group()
    got = c.read(1000, block_ms=100)
    c.ack(*[m.id for m in got[:700]])  # 700 acked, 300 pending, 2000 never delivered
    slow_got = slow.read(500, block_ms=100)
    slow.ack(*[m.id for m in slow_got])  # the other group is behind: only 500 acked there
    removed = c.trim(maxlen=100)
    remaining = {e[0].decode() for e in any_r.xrange(S)}
    assert set(ids[500:]) <= remaining  # everything either group still needs
    assert removed <= 500
    # once both groups are done, the stream shrinks to about the cap
    rest = c.read(3000, block_ms=100)
    c.ack(*[m.id for m in got[700:] + rest])
    slow.ack(*[m.id for m in slow.read(3000, block_ms=100)])
    c.trim(maxlen=100)
    assert any_r.xlen(S) < 200
    assert c.pending_summary().count == 0


def test_trim_without_group_keeps_everything(r: redis.Redis) -> None:
    Producer(r).submit_many(range(1, 301))
    c = Consumer(r, None, S, G, "c")  # group not created
    assert c.trim(maxlen=10) == 0 and r.xlen(S) == 300


def test_reap_removes_only_idle_consumers_owning_nothing(r: redis.Redis) -> None:
    Producer(r).submit_many([1])
    busy, idle, me = consumer(r, "busy"), consumer(r, "idle"), consumer(r, "me")
    busy.read(1, block_ms=50)
    idle.read(1, block_ms=10)
    me.read(1, block_ms=10)
    time.sleep(0.12)
    assert me.reap_consumers(min_idle_ms=100) == ["idle"]
    names = {c["name"] for c in r.xinfo_consumers(S, G)}
    assert names == {b"busy", b"me"}


def test_group_recreated_after_flush(r: redis.Redis) -> None:
    c = consumer(r)
    Producer(r).submit_task(1)
    assert len(c.read(1, block_ms=50)) == 1
    r.flushall()
    Producer(r).submit_task(2)  # stream recreated without the group
    got = c.read(1, block_ms=50)  # the group is recreated at id 0, so nothing written since is missed
    assert [m.message.task_id for m in got] == [2]


def test_refused_writes_leave_the_entry_pending_never_acked(any_r: redis.Redis) -> None:
    """Out of memory: Redis refuses the script at its first write, which comes before the XACK."""
    Producer(any_r).submit_many([1, 2])
    c = consumer(any_r)
    first, second = c.read(2, block_ms=100)
    any_r.config_set("maxmemory", 1)
    try:
        with pytest.raises(redis.ResponseError, match=r"OOM|maxmemory"):
            c.requeue(first, 0.5)
        with pytest.raises(redis.ResponseError, match=r"OOM|maxmemory"):
            c.dead_letter(second, "permanent: INVALID_ARGUMENT")
    finally:
        any_r.config_set("maxmemory", 0)
    assert c.pending_summary().count == 2
    assert any_r.zcard(f"{S}:delayed") == 0 and dlq(any_r) == []
    assert c.requeue(first, 0.5) and c.dead_letter(second, "permanent: INVALID_ARGUMENT")


def test_max_deliveries_dead_letter_carries_retry_incremented(r: redis.Redis) -> None:
    Producer(r).submit_task(3)
    consumer(r, "crashy").read(1, block_ms=100)
    consumer(r, "crashy", max_deliveries=1).read(1, block_ms=10)
    [letter] = dlq(r)
    assert letter["reason"].startswith("max_deliveries") and json.loads(letter["payload"])["retry"] == 1
