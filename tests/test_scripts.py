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
    Producer(r).submit_many([1, 2, 3])
    r.script_flush()
    scripts = Scripts(r)

    def build(pipe: redis.Redis) -> None:
        scripts.queue(
            pipe, "claim_batch", [keys.last_success_hash(S), keys.inflight_key(S, 1)], [1000, "1-1", 1, 1, 0]
        )
        consumer.queue_read(pipe, 10)  # runs once: a second XREADGROUP > would find nothing

    verdicts, reply = scripts.execute(build)
    assert verdicts == [b"run"]
    assert [m.message.task_id for m in consumer.accept(reply)] == [1, 2, 3]
    assert r.get(keys.inflight_key(S, 1)) == b"1-1"


def test_errors_come_back_in_place_when_asked(r: redis.Redis) -> None:
    scripts = Scripts(r)
    r.set("not-a-stream", "x")

    def build(pipe: redis.Redis) -> None:
        pipe.xlen("not-a-stream")
        pipe.ping()

    error, pong = scripts.execute(build, raise_on_error=False)
    assert isinstance(error, redis.ResponseError) and pong is True
