"""The Redis task registry: specs read back as written, every change seen on the next read."""

from __future__ import annotations

import pytest
import redis

from scheduler.errors import InvalidTaskError
from scheduler.taskqueue import keys
from scheduler.tasks.registry import RedisTaskRegistry, TaskSpec


def test_a_spec_rewritten_in_redis_is_what_the_next_read_returns(r: redis.Redis) -> None:
    registry = RedisTaskRegistry(r)
    first = TaskSpec(71, "switch", min_price=100, updated_at=1.0)
    registry.put_many([first])
    assert registry.get(71) == first
    registry.put_many([TaskSpec(71, "switch lite", min_price=100, updated_at=1.0)])  # same updated_at
    assert registry.get(71).keyword == "switch lite"  # type: ignore[union-attr]
    r.hset(keys.task_spec_key(71), "status", "stopped")  # a field changed behind the registry's back
    assert registry.get(71).status == "stopped"  # type: ignore[union-attr]


def test_the_same_hash_read_twice_is_parsed_once_and_another_task_is_its_own(r: redis.Redis) -> None:
    registry = RedisTaskRegistry(r)
    registry.put_many([TaskSpec(72, "same", updated_at=2.0), TaskSpec(73, "same", updated_at=2.0)])
    a, b = registry.get(72), registry.get(72)
    assert a is b  # immutable, kept by content
    other = registry.get(73)
    assert other is not None and other.task_id == 73 and other is not a


def test_a_hash_without_updated_at_is_parsed_on_every_read(r: redis.Redis) -> None:
    r.hset(keys.task_spec_key(74), mapping={"keyword": "old release", "status": "running"})
    registry = RedisTaskRegistry(r)
    a, b = registry.get(74), registry.get(74)
    assert a is not None and b is not None and a is not b  # its updated_at is the time of each read
    assert (a.keyword, a.status) == ("old release", "running")


def test_an_unreadable_spec_is_unknown_on_every_read(r: redis.Redis) -> None:
    r.hset(keys.task_spec_key(75), mapping={"keyword": "x", "limit": "-1", "updated_at": "3.0"})
    registry = RedisTaskRegistry(r)
    for _ in range(2):
        pipe = r.pipeline()
        registry.queue_get_many(pipe, [75])
        assert registry.parse_many([75], pipe.execute()) == {75: None}


def test_a_long_spec_is_parsed_each_time_and_a_bool_id_is_never_task_1(r: redis.Redis) -> None:
    registry = RedisTaskRegistry(r)
    words = tuple(f"word{i:04d}" for i in range(200))  # ~1.8 KB of exclusions: not kept
    registry.put_many([TaskSpec(76, "long", exclude_keywords=words, updated_at=4.0), TaskSpec(1, "one")])
    a, b = registry.get(76), registry.get(76)
    assert a is not None and a == b and a is not b and a.exclude_keywords == words
    raw = r.hgetall(keys.task_spec_key(1))
    assert TaskSpec.from_hash(1, raw).task_id == 1
    with pytest.raises(InvalidTaskError):
        TaskSpec.from_hash(True, raw)  # type: ignore[arg-type]
