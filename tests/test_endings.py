"""The ending script directly: every outcome, a zombie, a double run, a refused write, the seen-items
bound; and reclaim matching entries by id on every Redis version."""

from __future__ import annotations

import json
import time

import pytest
import redis

from scheduler.config.load import load_settings
from scheduler.taskqueue import Consumer, Producer, keys
from scheduler.taskqueue.endings import NOT_HELD, Ender, Limits, acked, dead_lettered, retried, succeeded
from scheduler.taskqueue.message import entry_stamp
from scheduler.tasks.lifecycle import Lifecycle, RunRequest

S, G = keys.DEFAULT_STREAM, keys.DEFAULT_GROUP


def read_all(client: redis.Redis, name: str, tasks: list[int]) -> tuple[Consumer, list[str]]:
    consumer = Consumer(client, None, S, G, name)
    consumer.ensure_group()
    Producer(client).submit_many(tasks, "user_create")
    return consumer, [m.id for m in consumer.read(len(tasks), block_ms=100)]


def ok(entry: str, task: int, ids: list[str], started: int = 5) -> object:
    return succeeded(entry, task, status="success", total_found=len(ids), crawled_at="t", items_json="[]",
                     started_ms=started, source_ids=ids)  # fmt: skip


def test_every_outcome_writes_its_keys_releases_the_lock_and_acks(any_r: redis.Redis) -> None:
    r = any_r
    consumer, (e1, e2, e3, e4) = read_all(r, "c", [1, 2, 3, 4])
    for task, entry in zip((1, 2, 3, 4), (e1, e2, e3, e4), strict=True):
        r.set(keys.run_lock_key(S, task), entry)
    ender = consumer.ender
    answers = ender.end([
        ok(e1, 1, ["a", "b"]),  # type: ignore[list-item]
        retried(e2, 2, '{"task_id":2,"action":"execute","retry":1}', 60_000, "UNAVAILABLE: down"),
        dead_lettered(e3, 3, '{"task_id":3}', "permanent: INVALID_ARGUMENT: x", "now", "INVALID_ARGUMENT: x"),
        acked(e4, 4),
    ])  # fmt: skip
    assert answers == ["ok:2", "retry", "dead", "ack"]
    assert r.xpending(S, G)["pending"] == 0
    assert r.get(keys.run_lock_key(S, 1)) is None and r.get(keys.run_lock_key(S, 3)) is None
    assert r.get(keys.run_lock_key(S, 4)) is None
    parked = r.get(keys.run_lock_key(S, 2))
    assert parked is not None and parked.decode().startswith(f"retry:{e2}:")  # handed to the retry
    assert r.zcard(keys.delayed_set(S)) == 1
    assert r.get(keys.crawl_status_key(1)) == b"success" and r.get(keys.crawl_message_key(1)) is None
    assert r.get(keys.crawl_status_key(2)) == b"failed"
    assert r.get(keys.crawl_message_key(2)) == b"UNAVAILABLE: down"
    assert r.get(keys.crawl_status_key(3)) == b"failed"
    assert r.hget(keys.last_success_hash(S), "1") == b"5"
    [(_, result)] = r.xrange(keys.results_stream(S))
    assert json.loads(result[b"new_items"]) == ["a", "b"]
    [(_, letter)] = r.xrange(keys.dlq_stream(S))
    assert letter[b"original_id"] == e3.encode()


def test_sent_twice_the_same_answer_and_nothing_written_again(r: redis.Redis) -> None:
    consumer, (e1, e2) = read_all(r, "c", [1, 2])
    batch = [ok(e1, 1, ["a"]), dead_lettered(e2, 2, "{}", "permanent: x", "now", "x")]
    assert consumer.ender.end(batch) == ["ok:1", "dead"]  # type: ignore[arg-type]
    assert consumer.ender.end(batch) == ["ok:1", "dead"]  # type: ignore[arg-type]
    assert r.xlen(keys.results_stream(S)) == 1 and r.xlen(keys.dlq_stream(S)) == 1


def test_a_zombie_writes_nothing(r: redis.Redis) -> None:
    consumer, [entry] = read_all(r, "zombie", [7])
    r.xclaim(S, G, "other", 0, [entry])  # reclaimed by another daemon while the zombie crawled
    r.set(keys.run_lock_key(S, 7), entry)
    assert consumer.ender.end([ok(entry, 7, ["a"])]) == [NOT_HELD]  # type: ignore[list-item]
    assert consumer.ender.end([acked(entry, 7)]) == [NOT_HELD]
    assert r.get(keys.run_lock_key(S, 7)) == entry.encode()  # the new holder's lock is left alone
    assert r.xlen(keys.results_stream(S)) == 0 and r.get(keys.crawl_status_key(7)) is None
    assert r.xpending(S, G)["pending"] == 1


def test_a_refused_write_leaves_the_entry_pending(r: redis.Redis) -> None:
    consumer, [entry] = read_all(r, "c", [8])
    r.config_set("maxmemory", "1")
    try:
        with pytest.raises(redis.ResponseError):
            consumer.ender.end([ok(entry, 8, ["a"])])  # type: ignore[list-item]
    finally:
        r.config_set("maxmemory", "0")
    assert r.xpending(S, G)["pending"] == 1 and r.xlen(keys.results_stream(S)) == 0
    assert consumer.ender.end([ok(entry, 8, ["a"])]) == ["ok:1"]  # type: ignore[list-item]


def test_seen_items_are_bounded_to_the_most_recently_seen(r: redis.Redis) -> None:
    consumer = Consumer(r, None, S, G, "c", limits=Limits(seen_items_per_task=5))
    consumer.ensure_group()
    ender: Ender = consumer.ender
    first_ids = [f"old{i}" for i in range(5)]
    for batch in (first_ids, ["new0", "new1", "new2"]):
        time.sleep(0.002)  # seen a millisecond later: ties in the score would be broken by name
        Producer(r).submit_task(9)
        [msg] = consumer.read(1, block_ms=100)
        ender.end([ok(msg.id, 9, batch)])  # type: ignore[list-item]
    seen = keys.seen_items_key(S, 9)
    assert r.zcard(seen) == 5  # the bound holds
    assert {b"new0", b"new1", b"new2"} <= set(r.zrange(seen, 0, -1))
    assert r.pttl(seen) > 0


def test_reclaim_matches_by_id_dead_letters_trimmed_entries_and_claims_live_ones(any_r: redis.Redis) -> None:
    r = any_r
    _, ids = read_all(r, "dead", [1, 2, 3, 4])
    r.xdel(S, ids[1], ids[2])  # trimmed under the dead consumer
    rescuer = Consumer(r, None, S, G, "rescuer")
    got = rescuer.reclaim(0, 10)
    assert [m.id for m in got] == [ids[0], ids[3]]  # the live ones, with their payloads
    assert [m.message.task_id for m in got] == [1, 4]
    letters = [fields for _, fields in r.xrange(keys.dlq_stream(S))]
    assert sorted(f[b"original_id"].decode() for f in letters) == sorted([ids[1], ids[2]])
    assert all(f[b"reason"].startswith(b"payload_lost") for f in letters)
    pending = r.xpending_range(S, G, min="-", max="+", count=10)
    assert [(p["message_id"].decode(), p["consumer"]) for p in pending] == [
        (ids[0], b"rescuer"), (ids[3], b"rescuer")]  # fmt: skip
    assert all(p["times_delivered"] == 2 for p in pending)  # the delivery is counted (crash-loop cap)


def test_an_entry_no_one_holds_any_more_frees_its_lock_when_its_holder_ends_it(r: redis.Redis) -> None:
    """The stream deleted under a running crawl (group and entry gone): the holder's ending finds it not
    held, and the lock naming it goes, instead of waiting for the next request to heal it."""
    consumer, [entry] = read_all(r, "c", [11])
    r.set(keys.run_lock_key(S, 11), entry)
    r.delete(S)
    assert consumer.ender.end([ok(entry, 11, ["a"])]) == [NOT_HELD]  # type: ignore[list-item]
    assert r.get(keys.run_lock_key(S, 11)) is None


def test_the_sweep_deletes_only_locks_that_name_no_live_run(r: redis.Redis) -> None:
    from scheduler.config.load import load_settings
    from scheduler.tasks.lifecycle import Lifecycle

    _, [held, gone] = read_all(r, "c", [12, 13])
    queued = Producer(r).submit_task(14)
    r.xdel(S, gone)
    r.xack(S, G, gone)
    for task, value in ((12, held), (13, gone), (14, queued), (15, "retry:1-1:99"), (16, "junk")):
        r.set(keys.run_lock_key(S, task), value)
    r.zadd(keys.delayed_set(S), {"1-1|{}": 99})
    life = Lifecycle(load_settings(env={}), r)
    assert life.sweep_locks() == (0, 2)  # 13 (its entry gone) and 16 (names nothing)
    left = {t for t in (12, 13, 14, 15, 16) if r.get(keys.run_lock_key(S, t))}
    assert left == {12, 14, 15}


def test_a_batch_checks_holding_exactly_past_one_xpending_page(r: redis.Redis) -> None:
    """The scripts ask which entries this consumer holds in one XPENDING over the batch's id range; a
    range with more of its entries than a page holds is still answered entry by entry, exactly."""
    consumer, ids = read_all(r, "c", list(range(1, 101)))
    other = Consumer(r, None, S, G, "other")
    r.xclaim(S, G, "other", 0, [ids[50]])  # in the middle of the range, held by someone else
    # first and last of 100 entries pending to "c": the first page (2 * 3 + 32 entries) ends far before
    # the last one, which is then asked alone
    answers = consumer.ender.end([acked(ids[0], 1), acked(ids[50], 51), acked(ids[99], 100)])
    assert answers == ["ack", NOT_HELD, "ack"]
    assert other.ender.end([acked(ids[50], 51)]) == ["ack"]
    assert r.xpending(S, G)["pending"] == 97
    life_requests = [RunRequest(t, ids[t - 1], entry_stamp(ids[t - 1]), 0, False) for t in (2, 51, 99)]
    lifecycle = Lifecycle(load_settings(env={}), r)
    assert lifecycle.verdicts(lifecycle.lock_runs(life_requests, "c"))[1] == ["run", "gone", "run"]


def test_the_same_entry_twice_in_one_call_is_ended_once(r: redis.Redis) -> None:
    consumer, [entry] = read_all(r, "c", [5])
    assert consumer.ender.end([ok(entry, 5, ["a"]), ok(entry, 5, ["a"])]) == ["ok:1", "ok:1"]  # type: ignore[list-item]
    assert r.xlen(keys.results_stream(S)) == 1


def test_the_message_key_follows_the_status(any_r: redis.Redis) -> None:
    """A message is written beside 'failed' and 'no_items' only, and deleted by every success: also one
    written apart (a Go scheduler sharing the keys) beside 'success', or left with no status at all."""
    r = any_r
    status, message = keys.crawl_status_key(3), keys.crawl_message_key(3)

    consumer = Consumer(r, None, S, G, "c")
    consumer.ensure_group()

    def end(outcome: object) -> None:
        Producer(r).submit_task(3)
        [msg] = consumer.read(1, block_ms=100)
        consumer.ender.end([outcome(msg.id)])  # type: ignore[operator]

    end(lambda e: ok(e, 3, ["a"]))
    assert r.get(status) == b"success" and r.get(message) is None
    end(lambda e: retried(e, 3, '{"task_id":3,"action":"execute","retry":1}', 60_000, "UNAVAILABLE: down"))
    assert r.get(status) == b"failed" and r.get(message) == b"UNAVAILABLE: down"
    end(lambda e: ok(e, 3, []))
    assert r.get(status) == b"success" and r.get(message) is None
    end(lambda e: succeeded(e, 3, status="no_items", total_found=0, crawled_at="t", items_json="[]",
                            started_ms=5, source_ids=[]))  # fmt: skip
    assert r.get(status) == b"no_items" and r.get(message) == b"no_items"
    end(lambda e: ok(e, 3, ["b"]))
    assert r.get(status) == b"success" and r.get(message) is None
    r.set(message, "written apart by a Go scheduler")  # beside 'success', and then with no status at all
    end(lambda e: ok(e, 3, ["c"]))
    assert r.get(status) == b"success" and r.get(message) is None
    r.delete(status)
    r.set(message, "stale")
    end(lambda e: ok(e, 3, ["d"]))
    assert r.get(status) == b"success" and r.get(message) is None
    assert r.ttl(status) > 0


def test_an_id_redis_refuses_as_a_bound_costs_only_itself(r: redis.Redis) -> None:
    consumer, [entry] = read_all(r, "c", [6])
    answers = consumer.ender.end([acked("99999999999999999999-0", 7), acked(entry, 6)])
    assert answers == [NOT_HELD, "ack"]
    assert r.xpending(S, G)["pending"] == 0


def test_ids_past_two_to_the_53_compare_exactly(r: redis.Redis) -> None:
    """Sequence numbers Lua's doubles cannot tell apart: the entry is still found held."""
    consumer = Consumer(r, None, S, G, "c")
    consumer.ensure_group()
    r.xadd(S, {"data": "{}"}, id="5-9007199254740992")
    r.xadd(S, {"data": "{}"}, id="5-9007199254740993")
    r.xreadgroup(G, "c", {S: ">"}, count=2)
    # as doubles the two ids are equal: the batch's range would end at the first, missing the second
    answers = consumer.ender.end([acked("5-9007199254740993", 1), acked("5-9007199254740992", 2)])
    assert answers == ["ack", "ack"]
