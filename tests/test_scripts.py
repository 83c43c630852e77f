"""Scripts queued on pipelines: a Redis without them (restarted, flushed) must not cost a read its entries."""

import redis

from scheduler.taskqueue import Consumer, Producer, keys
from scheduler.taskqueue.scripts import NAMES, Scripts, source

S, G = keys.DEFAULT_STREAM, keys.DEFAULT_GROUP


def test_every_script_compiles_on_this_redis(any_r: redis.Redis) -> None:
    for name in NAMES:
        assert any_r.script_load(source(name))


def test_noscript_reissues_only_the_script_calls(r: redis.Redis) -> None:
    consumer = Consumer(r, None, S, G, "c")
    consumer.ensure_group()
    [first] = Producer(r).submit_many([1])
    consumer.read(1, block_ms=10)
    Producer(r).submit_many([1, 2, 3])
    r.script_flush()
    scripts = Scripts(r)
    lock_keys = [S, keys.delayed_set(S), keys.last_success_hash(S), keys.run_requests_hash(S),
                 keys.run_lock_key(S, 1)]  # fmt: skip

    def build(pipe: redis.Redis) -> None:
        scripts.queue(pipe, "lock_runs", lock_keys, [G, "c", 1000, 30000, first, 1, 1, 0, ""])
        consumer.queue_read(pipe, 10)  # runs once: a second XREADGROUP > would find nothing

    (_, verdict), reply = scripts.execute(build)
    assert verdict == b"run"
    assert [m.message.task_id for m in consumer.accept(reply)] == [1, 2, 3]
    assert r.get(keys.run_lock_key(S, 1)) == first.encode()


def test_errors_come_back_in_place_when_asked(r: redis.Redis) -> None:
    scripts = Scripts(r)
    r.set("not-a-stream", "x")

    def build(pipe: redis.Redis) -> None:
        pipe.xlen("not-a-stream")
        pipe.ping()

    error, pong = scripts.execute(build, raise_on_error=False)
    assert isinstance(error, redis.ResponseError) and pong is True
