import json
import re

import pytest
import redis

from scheduler.errors import InvalidTaskError, QueueConnectionError
from scheduler.taskqueue import Producer
from scheduler.taskqueue.keys import DEFAULT_STREAM

GO_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def test_submit_writes_one_data_field_go_can_read(r: redis.Redis) -> None:
    entry_id = Producer(r).submit_task(42, "user_create")
    [(got_id, fields)] = r.xrange(DEFAULT_STREAM)
    assert got_id.decode() == entry_id
    assert list(fields) == [b"data"]
    obj = json.loads(fields[b"data"])
    # Go's json.Unmarshal into TaskMessage{TaskID uint; Action string; Timestamp time.Time; Retry int; Source string}
    assert list(obj) == ["task_id", "action", "timestamp", "retry", "source"]
    assert type(obj["task_id"]) is int and obj["task_id"] == 42
    assert obj["action"] == "execute" and obj["retry"] == 0 and obj["source"] == "user_create"
    assert GO_RFC3339.match(obj["timestamp"])


def test_stop_and_empty_source(r: redis.Redis) -> None:
    producer = Producer(r, stream="s")
    producer.stop_task(7)
    producer.submit_task(8, "")
    sources = [json.loads(f[b"data"])["source"] for _, f in r.xrange("s")]
    actions = [json.loads(f[b"data"])["action"] for _, f in r.xrange("s")]
    assert sources == ["system", "unknown"]
    assert actions == ["stop", "execute"]


@pytest.mark.parametrize("task_id", [0, -5, 2**63])
def test_rejects_bad_task_id_and_writes_nothing(r: redis.Redis, task_id: int) -> None:
    with pytest.raises(InvalidTaskError, match="task_id"):
        Producer(r).submit_task(task_id)
    assert r.xlen(DEFAULT_STREAM) == 0


def test_submit_many_is_pipelined_and_all_or_nothing_on_validation(r: redis.Redis) -> None:
    producer = Producer(r, stream="s")
    ids = producer.submit_many(range(1, 1001), "periodic")
    assert len(ids) == 1000 and len(set(ids)) == 1000
    assert [json.loads(f[b"data"])["task_id"] for _, f in r.xrange("s", count=3)] == [1, 2, 3]
    with pytest.raises(InvalidTaskError):
        producer.submit_many([5, 0, 6])
    assert r.xlen("s") == 1000
    before = int(r.info("stats")["total_commands_processed"])
    producer.submit_many(range(1, 51))
    calls = int(r.info("stats")["total_commands_processed"]) - before
    assert calls == 51  # 50 XADDs + the INFO itself: no per-entry extra round-trip


def test_decode_responses_client_is_accepted(redis_server: object, r: redis.Redis) -> None:
    text_client = redis.Redis(port=r.connection_pool.connection_kwargs["port"], decode_responses=True)
    assert isinstance(Producer(text_client).submit_task(3), str)


def test_connection_error_is_a_clear_category() -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=0.2)
    with pytest.raises(QueueConnectionError, match="Redis unavailable"):
        Producer(dead).submit_task(1)
