import json
import threading
import time

import pytest
import redis

from scheduler.config import Settings, load_settings
from scheduler.lifecycle import Lifecycle
from scheduler.redis_server import RedisServer
from scheduler.registry import RedisTaskRegistry, TaskSpec
from scheduler.taskqueue import Consumer, keys

S = keys.DEFAULT_STREAM


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return load_settings(env={"REDIS_URL": redis_server.url, "APP_SCHEDULE_INTERVAL": "1s"})


@pytest.fixture
def life(settings: Settings, r: redis.Redis) -> Lifecycle:
    return Lifecycle(settings, r)


def entries(r: redis.Redis) -> list[dict[str, object]]:
    return [json.loads(fields[b"data"]) for _, fields in r.xrange(S)]


def test_register_schedules_one_interval_ahead_and_runs_now(life: Lifecycle, r: redis.Redis) -> None:
    before = int(time.time() * 1000)
    started = life.register([TaskSpec(1, "a", interval_s=60), TaskSpec(2, "b", status="stopped")])
    assert list(started) == [1]
    assert [(e["task_id"], e["source"]) for e in entries(r)] == [(1, "user_create")]
    score = r.zscore(life.schedule, "1")
    assert score is not None and before + 60_000 <= score <= time.time() * 1000 + 60_000
    assert r.zscore(life.schedule, "2") is None
    assert RedisTaskRegistry(r).get(2).status == "stopped"  # type: ignore[union-attr]


def test_many_publishers_publish_each_due_task_once_per_period(life: Lifecycle, r: redis.Redis) -> None:
    RedisTaskRegistry(r).put_many([TaskSpec(t, f"k{t}", interval_s=5) for t in range(1, 51)])
    now_ms = int(time.time() * 1000)
    r.zadd(life.schedule, {str(t): now_ms - 10 for t in range(1, 51)})
    r.hset(life.intervals, mapping={str(t): 5000 for t in range(1, 51)})
    totals: list[int] = []
    barrier = threading.Barrier(6)

    def publisher() -> None:
        barrier.wait()
        for _ in range(20):
            totals.append(life.publish_due()[0])

    threads = [threading.Thread(target=publisher) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(totals) == 50 and r.xlen(S) == 50
    assert sorted(e["task_id"] for e in entries(r)) == list(range(1, 51))
    assert {e["source"] for e in entries(r)} == {"periodic"}
    for t in range(1, 51):  # next run is the scheduled time plus one period: no drift
        assert r.zscore(life.schedule, str(t)) == now_ms - 10 + 5000


def test_missed_periods_collapse_into_one_run_then_a_full_period(life: Lifecycle, r: redis.Redis) -> None:
    now_ms = int(time.time() * 1000)
    scheduled = now_ms - 7_500  # 7.5 periods of 1 s missed
    r.zadd(life.schedule, {"7": scheduled})
    r.hset(life.intervals, "7", 1000)
    published, skipped, next_in = life.publish_due()
    assert (published, skipped) == (1, 0)
    next_run = r.zscore(life.schedule, "7")
    after = int(time.time() * 1000)
    assert next_run is not None and now_ms + 1000 <= next_run <= after + 1000
    assert next_in is not None and 0.9 <= next_in <= 1.0
    assert life.publish_due()[:2] == (0, 0)


def test_a_run_still_held_is_skipped_not_stacked(life: Lifecycle, r: redis.Redis) -> None:
    r.hset(life.intervals, "3", 1000)
    r.zadd(life.schedule, {"3": int(time.time() * 1000) - 1})
    assert life.publish_due()[:2] == (1, 0)
    entry_id = r.get(life.marker(3))
    assert entry_id == r.xrange(S)[0][0]  # the published entry holds the run
    r.zadd(life.schedule, {"3": int(time.time() * 1000) - 1})
    assert life.publish_due()[:2] == (0, 1)
    assert r.xlen(S) == 1


def test_claim_collapses_duplicates_and_satisfied_requests(life: Lifecycle, r: redis.Redis) -> None:
    now_ms = int(time.time() * 1000)
    first, second, third = f"{now_ms}-0", f"{now_ms}-1", f"{now_ms}-2"  # entry ids carry their add time
    assert life.claim(9, first, 0) == "run"
    assert life.claim(9, first, 0) == "run"  # a redelivery of the holder itself
    assert life.claim(9, second, 0) == "duplicate"
    life.release(9, first, now_ms + 5)
    assert r.get(life.marker(9)) is None
    assert life.claim(9, third, 0) == "satisfied"  # added before the successful crawl started
    assert life.claim(9, f"{now_ms + 10}-0", 0) == "run"
    batch = life.claim_batch([(10, f"{now_ms}-7", 0), (10, f"{now_ms}-8", 0), (11, f"{now_ms}-9", 0)])
    assert [v.decode() for v in batch] == ["run", "duplicate", "run"]  # one run per task per batch


def test_requeue_hands_the_run_to_the_retry(settings: Settings, life: Lifecycle, r: redis.Redis) -> None:
    consumer = Consumer(r, None, S, settings.task_queue_group, "c")
    consumer.ensure_group()
    RedisTaskRegistry(r).put(TaskSpec(4, "x"))
    life.register([TaskSpec(4, "x")])
    [msg] = consumer.read(1, block_ms=100)
    assert life.claim(4, msg.id, 0) == "run"
    assert consumer.requeue(msg, 0.05, marker=life.marker(4), marker_ttl_ms=life.marker_ttl_ms)
    assert r.get(life.marker(4)) == f"retry:{msg.id}".encode()
    assert life.claim(4, f"{int(time.time() * 1000)}-9", 0) == "duplicate"  # a fresh execute waits for it
    assert life.resume(4)  # starting the task again keeps a retry that still waits
    assert r.get(life.marker(4)) == f"retry:{msg.id}".encode()
    time.sleep(0.06)
    consumer.move_due()
    [retry] = consumer.read(1, block_ms=100)
    assert retry.message.retry == 1
    assert life.claim(4, retry.id, 1) == "run"


def test_a_stop_racing_a_requeue_leaves_no_marker_behind(
    settings: Settings, life: Lifecycle, r: redis.Redis
) -> None:
    consumer = Consumer(r, None, S, settings.task_queue_group, "c")
    consumer.ensure_group()
    life.register([TaskSpec(12, "x")])
    [msg] = consumer.read(1, block_ms=100)
    assert life.claim(12, msg.id, 0) == "run"
    life.stop(12, who="test")  # lands between the failed crawl and its requeue
    assert consumer.requeue(msg, 30, marker=life.marker(12), marker_ttl_ms=life.marker_ttl_ms)
    assert r.get(life.marker(12)) is None  # not handed to the retry: the stop deleted it
    r.set(life.marker(12), "retry:1-1")  # a marker left by an older version, or a lost retry
    life.register([TaskSpec(12, "x")])
    assert r.get(life.marker(12)) is None  # starting the task clears it


def test_stop_unschedules_drops_parked_retries_and_tells_every_daemon(
    life: Lifecycle, r: redis.Redis
) -> None:
    life.register([TaskSpec(5, "x", interval_s=30), TaskSpec(6, "y", interval_s=30)])
    r.zadd(
        keys.delayed_set(S), {'1-1|{"task_id":5,"action":"execute"}': 1, '1-2|{"task_id":6,"action":"x"}': 2}
    )
    r.set(life.marker(5), "1-1")
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.control_channel(S))
    assert life.stop(5, who="test") is True
    assert r.zscore(life.schedule, "5") is None and r.zscore(life.schedule, "6") is not None
    assert r.zrange(keys.delayed_set(S), 0, -1) == [b'1-2|{"task_id":6,"action":"x"}']
    assert r.get(life.marker(5)) is None
    spec_hash = r.hgetall(keys.task_spec_key(5))
    assert spec_hash[b"status"] == b"stopped" and spec_hash[b"stopped_by"] == b"test"
    message = None
    for _ in range(20):
        message = pubsub.get_message(timeout=0.1)
        if message:
            break
    assert message is not None and message["data"] == b"stop 5"
    pubsub.close()
    assert life.stop(404, who="test") is False
    assert life.resume(5) and r.zscore(life.schedule, "5") is not None
