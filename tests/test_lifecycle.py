import json
import threading
import time

import pytest
import redis

from scheduler.config.load import load_settings
from scheduler.config.settings import Settings
from scheduler.devtools.redis_server import RedisServer
from scheduler.taskqueue import Consumer, Producer, StreamMessage, TaskMessage, keys
from scheduler.taskqueue.message import entry_stamp
from scheduler.tasks.lifecycle import Lifecycle, RunRequest
from scheduler.tasks.registry import RedisTaskRegistry, TaskSpec

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
    entry_id = r.get(life.lock_key(3))
    assert entry_id == r.xrange(S)[0][0]  # the published entry holds the run
    r.zadd(life.schedule, {"3": int(time.time() * 1000) - 1})
    assert life.publish_due()[:2] == (0, 1)
    assert r.xlen(S) == 1


def lock(
    life: Lifecycle, consumer: Consumer, task_id: int, entry_id: str, retry: int = 0, by_user: bool = False
) -> str:
    _, [verdict] = life.verdicts(life.lock_runs([RunRequest(task_id, entry_id, entry_stamp(entry_id), retry,
                                                            by_user)], consumer.name))  # fmt: skip
    return verdict


def test_run_locks_collapse_duplicates_and_satisfied_requests(
    settings: Settings, life: Lifecycle, r: redis.Redis
) -> None:
    consumer = Consumer(r, None, S, settings.task_queue_group, "c")
    consumer.ensure_group()
    first, second, third, fourth = Producer(r).submit_many([9, 9, 9, 9])
    consumer.read(10, block_ms=100)
    assert lock(life, consumer, 9, first) == "run"
    assert lock(life, consumer, 9, first) == "run"  # sent twice, or a redelivery of the holder itself
    assert lock(life, consumer, 9, second) == "duplicate"
    r.hset(life.last_success, "9", int(third.split("-")[0]) + 5)  # a crawl started after `third` succeeded
    assert consumer.finish(StreamMessage(first, TaskMessage.new(9, "execute"), b""))
    assert r.get(life.lock_key(9)) is None
    assert lock(life, consumer, 9, third) == "satisfied"
    r.hdel(life.last_success, "9")
    assert lock(life, consumer, 9, fourth) == "run"
    assert lock(life, Consumer(r, None, S, settings.task_queue_group, "other"), 9, fourth) == "gone"
    a, b, c = Producer(r).submit_many([10, 10, 11])
    consumer.read(10, block_ms=100)
    requests = [RunRequest(t, e, entry_stamp(e), 0, False) for t, e in ((10, a), (10, b), (11, c))]
    assert life.verdicts(life.lock_runs(requests, consumer.name))[1] == ["run", "duplicate", "run"]


def test_a_users_request_behind_a_delivered_run_waits_for_it_instead_of_collapsing(
    settings: Settings, life: Lifecycle, r: redis.Redis
) -> None:
    """A user's "run now" while a run of the task is delivered (its crawl may have started before the
    request) was acknowledged as a duplicate and went unanswered; a queued or parked run starts after the
    request and still answers it."""
    consumer = Consumer(r, None, S, settings.task_queue_group, "c")
    consumer.ensure_group()
    [running] = Producer(r).submit_many([21])
    consumer.read(10, block_ms=100)
    assert lock(life, consumer, 21, running) == "run"
    [asked] = Producer(r).submit_many([21])
    consumer.read(10, block_ms=100)
    assert lock(life, consumer, 21, asked, by_user=True) == "behind"
    assert lock(life, consumer, 21, asked, by_user=False) == "duplicate"  # a periodic run: collapsed
    assert (
        lock(life, consumer, 21, asked, retry=1, by_user=True) == "duplicate"
    )  # a second run of one request
    r.hset(life.last_success, "21", int(asked.split("-")[0]))  # a crawl started as it was made: answered
    assert lock(life, consumer, 21, asked, by_user=True) == "satisfied"
    r.hdel(life.last_success, "21")
    # a holder idle past the lease is dead or abandoned: waiting for it could last until its lock's TTL
    r.xclaim(S, settings.task_queue_group, "c", 0, [running], idle=int(settings.lease_timeout * 1000) + 1000)
    assert lock(life, consumer, 21, asked, by_user=True) == "duplicate"
    # a holder added after the request starts after it, and answers it
    asked_first, holder = Producer(r).submit_many([25, 25])
    consumer.read(10, block_ms=100)
    assert lock(life, consumer, 25, holder) == "run"
    assert lock(life, consumer, 25, asked_first, by_user=True) == "duplicate"
    r.set(life.lock_key(23), "retry:9-9:99999999999999")  # a parked retry: it starts later, and answers
    r.zadd(f"{S}:delayed", {"9-9|{}": 99999999999999})
    [late] = Producer(r).submit_many([23])
    consumer.read(10, block_ms=100)
    assert lock(life, consumer, 23, late, by_user=True) == "duplicate"


def test_a_lock_naming_no_live_run_is_taken_over(settings: Settings, life: Lifecycle, r: redis.Redis) -> None:
    """Defect 4: a lock left by an entry acknowledged without releasing it costs one check, not an hour."""
    consumer = Consumer(r, None, S, settings.task_queue_group, "c")
    consumer.ensure_group()
    done, fresh = Producer(r).submit_many([13, 13])
    consumer.read(10, block_ms=100)
    r.set(life.lock_key(13), done)
    assert lock(life, consumer, 13, fresh) == "duplicate"  # `done` is still pending: a live run
    consumer.ack(done)  # a bare XACK (the previous release's zombie path) leaks the lock
    assert lock(life, consumer, 13, fresh) == "healed"
    assert r.get(life.lock_key(13)) == fresh.encode()
    r.set(life.lock_key(14), "retry:1-1:5")  # a parked retry that is no longer parked
    [entry] = Producer(r).submit_many([14])
    consumer.read(10, block_ms=100)
    assert lock(life, consumer, 14, entry) == "healed"
    queued = Producer(r).submit_task(15)  # published, not yet delivered: a live run
    r.set(life.lock_key(15), queued)
    assert life.publish_due()[:2] == (0, 0) and r.get(life.lock_key(15)) == queued.encode()


def test_requeue_hands_the_run_to_the_retry(settings: Settings, life: Lifecycle, r: redis.Redis) -> None:
    consumer = Consumer(r, None, S, settings.task_queue_group, "c")
    consumer.ensure_group()
    life.register([TaskSpec(4, "x")])
    [msg] = consumer.read(1, block_ms=100)
    assert lock(life, consumer, 4, msg.id) == "run"
    assert consumer.requeue(msg, 0.05)
    parked = r.get(life.lock_key(4))
    assert parked is not None and parked.decode().startswith(f"retry:{msg.id}:")
    [fresh] = Producer(r).submit_many([4])
    consumer.read(1, block_ms=100)
    assert lock(life, consumer, 4, fresh) == "duplicate"  # a fresh execute waits for the parked retry
    assert life.resume(4) == "applied"  # starting the task again keeps a retry that still waits
    assert r.get(life.lock_key(4)) == parked
    time.sleep(0.06)
    consumer.move_due()
    retry_id = r.get(life.lock_key(4))
    assert retry_id is not None and not retry_id.startswith(b"retry:")  # re-pointed to the new entry
    [retry] = consumer.read(1, block_ms=100)
    assert retry.id == retry_id.decode() and retry.message.retry == 1 and retry.message.origin == msg.id
    assert lock(life, consumer, 4, retry.id, 1) == "run"


def test_a_stop_racing_a_requeue_leaves_no_lock_behind(
    settings: Settings, life: Lifecycle, r: redis.Redis
) -> None:
    consumer = Consumer(r, None, S, settings.task_queue_group, "c")
    consumer.ensure_group()
    life.register([TaskSpec(12, "x")])
    [msg] = consumer.read(1, block_ms=100)
    assert lock(life, consumer, 12, msg.id) == "run"
    life.stop(12, who="test")  # lands between the failed crawl and its requeue
    assert consumer.requeue(msg, 30)
    assert r.get(life.lock_key(12)) is None  # not handed to the retry: the stop deleted it
    r.set(life.lock_key(12), "retry:1-1")  # a lock left by the previous release, or a lost retry
    life.register([TaskSpec(12, "x")])
    assert r.get(life.lock_key(12)) is None  # starting the task clears it


def test_a_stop_made_before_a_re_enable_but_processed_after_it_changes_nothing(
    life: Lifecycle, r: redis.Redis
) -> None:
    """Defect 5: stops and re-enables are ordered by when they were made, not when processed."""
    life.register([TaskSpec(21, "x", interval_s=60)])
    stop_made = Producer(r).stop_task(21)
    time.sleep(0.005)
    life.register([TaskSpec(21, "x", interval_s=60)])  # `task add` after the stop was queued
    assert life.stop(21, "stop message", entry_stamp(stop_made)) == "stale"
    spec = RedisTaskRegistry(r).get(21)
    assert spec is not None and spec.status == "running" and r.zscore(life.schedule, "21") is not None
    later = int(time.time() * 1_000_000) + 10_000
    assert life.stop(21, "stop message", later) == "applied"
    assert life.resume(21, later - 1) == "stale"  # a request made before that stop does not restart it
    assert RedisTaskRegistry(r).get(21).status == "stopped"  # type: ignore[union-attr]
    assert life.resume(21, later + 1) == "applied"
    assert r.zscore(life.schedule, "21") is not None


def test_stop_unschedules_drops_parked_retries_and_tells_every_daemon(
    life: Lifecycle, r: redis.Redis
) -> None:
    life.register([TaskSpec(5, "x", interval_s=30), TaskSpec(6, "y", interval_s=30)])
    r.zadd(
        keys.delayed_set(S), {'1-1|{"task_id":5,"action":"execute"}': 1, '1-2|{"task_id":6,"action":"x"}': 2}
    )
    r.set(life.lock_key(5), "1-1")
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.control_channel(S))
    assert life.stop(5, who="test") == "applied"
    assert r.zscore(life.schedule, "5") is None and r.zscore(life.schedule, "6") is not None
    assert r.zrange(keys.delayed_set(S), 0, -1) == [b'1-2|{"task_id":6,"action":"x"}']
    assert r.get(life.lock_key(5)) is None
    spec_hash = r.hgetall(keys.task_spec_key(5))
    assert spec_hash[b"status"] == b"stopped" and spec_hash[b"stopped_by"] == b"test"
    message = None
    for _ in range(20):
        message = pubsub.get_message(timeout=0.1)
        if message:
            break
    assert message is not None and message["data"] == b"stop 5"
    pubsub.close()
    assert life.stop(404, who="test") == "unknown"
    assert life.resume(5) == "applied" and r.zscore(life.schedule, "5") is not None
