"""``scheduler.inspect`` called directly, against the real redis-server the tests start: every answer is
what the keys hold, written the way the daemon, the producer and the consumer write them."""

from __future__ import annotations

import json
import time

import redis

from scheduler.daemon.timers import heartbeat_payload
from scheduler.inspect.daemons import heartbeat_of, live_daemons, parse_heartbeat
from scheduler.inspect.deadletters import dead_letters, every_dead_letter, named_dead_letters
from scheduler.inspect.delayed import delayed_retries, parse_member
from scheduler.inspect.entries import Payload, decode_or_none, describe_payload, read_after, read_range
from scheduler.inspect.pending import pending_entries, pending_summary
from scheduler.inspect.queue import queue_gauges, queue_stats
from scheduler.inspect.tasks import task_states
from scheduler.taskqueue import Consumer, Producer, TaskMessage, keys

S, G = keys.DEFAULT_STREAM, keys.DEFAULT_GROUP
DLQ = keys.dlq_stream(S)


def consumer(client: redis.Redis, name: str = "c1") -> Consumer:
    c = Consumer(client, None, S, G, name)
    c.ensure_group()
    return c


# -- entries ----------------------------------------------------------------------------------------------


def test_describe_payload_says_what_a_payload_is_or_why_not() -> None:
    good = TaskMessage.new(7, "execute").with_retry(2).encode().encode()
    assert describe_payload(good, 64 * 1024, "trimmed") == Payload(7, "execute", 2, None)
    assert describe_payload(None, 64 * 1024, "trimmed") == Payload(None, None, None, "trimmed")
    assert describe_payload(b"{nope", 64 * 1024, "x") == Payload(None, None, None, "invalid: bad_json")
    assert (
        describe_payload(good, 10, "x").problem is not None
        and describe_payload(good, 10, "x").task_id is None
    )
    decoded = decode_or_none(good)
    assert decoded is not None and (decoded.task_id, decoded.retry) == (7, 2)
    assert decode_or_none("not json") is None and decode_or_none(None) is None


def test_read_range_and_read_after_give_text_ids(r: redis.Redis) -> None:
    first = r.xadd("s", {"a": "1"}).decode()
    second = r.xadd("s", {"b": "2"}).decode()
    assert read_range(r, "s", "-", "+") == [(first, {b"a": b"1"}), (second, {b"b": b"2"})]
    assert read_range(r, "s", "-", "+", 1) == [(first, {b"a": b"1"})]
    assert read_after(r, "s", "0-0") == [(first, {"a": "1"}), (second, {"b": "2"})]
    assert read_after(r, "s", first) == [(second, {"b": "2"})]
    assert read_after(r, "s", second) == [] and read_after(r, "missing", "0-0") == []


# -- delayed ----------------------------------------------------------------------------------------------


def test_delayed_retries_are_the_consumers_parked_requeues(r: redis.Redis) -> None:
    c = consumer(r)
    entry = Producer(r).submit_task(5, "user_create")
    [msg] = c.read(count=1, block_ms=None)
    before_ms = time.time() * 1000
    assert c.requeue(msg, delay_s=60.0)
    [parked] = delayed_retries(r, S)
    assert parked.entry_id == entry
    message = decode_or_none(parked.payload)
    assert message is not None and (message.task_id, message.retry) == (5, 1)
    assert before_ms + 59_000 < parked.due_ms < time.time() * 1000 + 61_000  # due in a minute
    assert parse_member(b"1-0|{}") == ("1-0", "{}") and parse_member("1-0|a|b") == ("1-0", "a|b")
    assert parse_member("lonely") == ("lonely", "")
    assert delayed_retries(r, "other") == []


# -- daemons ----------------------------------------------------------------------------------------------


def test_heartbeat_of_reads_what_the_daemon_writes(r: redis.Redis) -> None:
    assert heartbeat_of(r, S, G, "d1") is None
    r.set(keys.heartbeat_key(S, G, "d1"), heartbeat_payload("d1", 2, 8, "closed"))
    beat = heartbeat_of(r, S, G, "d1")
    assert beat is not None and beat.consumer == "d1"
    assert (beat.get("busy"), beat.get("workers"), beat.get("circuit")) == (2, 8, "closed")
    assert beat.age_s is not None and 0 <= beat.age_s < 30
    r.set(keys.heartbeat_key(S, G, "d1"), "garbage")
    broken = heartbeat_of(r, S, G, "d1")
    assert broken is not None and broken.fields is None and broken.age_s is None
    r.set(keys.heartbeat_key(S, G, "d1"), json.dumps({"busy": 1}))  # an object, but no ts
    no_ts = heartbeat_of(r, S, G, "d1")
    assert no_ts is not None and no_ts.fields == {"busy": 1} and no_ts.age_s is None
    assert parse_heartbeat(None) is None and parse_heartbeat(b"[1]") is None
    assert parse_heartbeat('{"ts": 1}') == {"ts": 1}


def test_live_daemons_lists_readable_heartbeats_by_name_glob_characters_literal(r: redis.Redis) -> None:
    now = time.time()
    r.set(keys.heartbeat_key(S, G, "b[1]"), json.dumps({"ts": now - 5, "consumer": "spoofed"}))
    r.set(keys.heartbeat_key(S, G, "a*"), json.dumps({"ts": now}))
    r.set(keys.heartbeat_key(S, G, "bad"), "not json")
    r.set(keys.heartbeat_key(S, "other-group", "x"), json.dumps({"ts": now}))
    beats = live_daemons(r, S, G)
    assert [b.consumer for b in beats] == ["a*", "b[1]"]  # "bad" is unreadable, "x" another group's
    older = beats[1]
    assert older.age_s is not None and 4 < older.age_s < 30
    assert older.as_dict()["consumer"] == "b[1]" and older.as_dict()["ts"] == now - 5
    assert live_daemons(r, "nothing", G) == []


def test_live_daemons_escapes_glob_characters_of_the_stream_name(r: redis.Redis) -> None:
    now = json.dumps({"ts": time.time()})
    r.set(keys.heartbeat_key("q[1]", G, "mine"), now)
    r.set(keys.heartbeat_key("q1", G, "not-mine"), now)  # "q[1]" as a glob would match "q1"
    assert [b.consumer for b in live_daemons(r, "q[1]", G)] == ["mine"]


# -- pending ----------------------------------------------------------------------------------------------


def test_pending_summary_is_none_without_a_group_and_never_creates_one(r: redis.Redis) -> None:
    assert pending_summary(r, S, G) is None
    r.xadd(S, {"data": "x"})
    assert pending_summary(r, S, G) is None
    assert r.xinfo_groups(S) == []  # asked, not created
    assert pending_entries(r, S, G, 10).total == 0 and pending_entries(r, S, G, 10).entries == []


def test_pending_entries_decode_payloads_and_tolerate_trimmed_and_poison(r: redis.Redis) -> None:
    consumer(r)
    good = Producer(r).submit_task(42, "user_create")
    trimmed = Producer(r).submit_task(43, "user_create")
    poison = r.xadd(S, {"data": "not json"}).decode()
    r.xreadgroup(G, "c1", {S: ">"}, count=2)
    r.xreadgroup(G, "c2", {S: ">"}, count=1)
    r.xdel(S, trimmed)
    summary = pending_summary(r, S, G)
    assert summary is not None
    assert (summary.count, summary.oldest_id, summary.newest_id) == (3, good, poison)
    assert summary.consumers == {"c1": 2, "c2": 1}
    found = pending_entries(r, S, G, 10)
    assert found.total == 3 and [e.id for e in found.entries] == [good, trimmed, poison]
    by_id = {e.id: e for e in found.entries}
    assert by_id[good].payload == Payload(42, "execute", 0, None)
    assert (by_id[good].consumer, by_id[good].deliveries) == ("c1", 1) and by_id[good].idle_s >= 0
    assert by_id[trimmed].payload == Payload(None, None, None, "trimmed")
    assert by_id[poison].payload.problem == "invalid: bad_json" and by_id[poison].consumer == "c2"
    oldest = pending_entries(r, S, G, 1)
    assert oldest.total == 3 and [e.id for e in oldest.entries] == [good]


# -- dead letters -----------------------------------------------------------------------------------------


def test_dead_letters_as_the_consumer_writes_them(r: redis.Redis) -> None:
    c = consumer(r)
    Producer(r).submit_task(7, "user_create")
    poison = r.xadd(S, {"data": '{"task_id":0,"action":"execute"}'}).decode()
    [msg] = c.read(count=10, block_ms=None)  # the poison one is dead-lettered by the read itself
    assert c.dead_letter(msg, "permanent: INVALID_ARGUMENT: no")
    found = dead_letters(r, S, 10)
    assert found.total == 2
    first, second = found.entries
    assert first.original_id == poison and not first.replayable
    assert first.payload.problem == "invalid: task_id_range" and first.reason.startswith("task_id_range")
    assert second.original_id == msg.id and second.replayable
    assert second.payload == Payload(7, "execute", 1, None)  # the Go original writes retry + 1
    assert second.reason == "permanent: INVALID_ARGUMENT: no" and second.failed_at.endswith("Z")
    limited = dead_letters(r, S, 1)
    assert limited.total == 2 and [e.id for e in limited.entries] == [first.id]
    r.xadd(DLQ, {"reason": "r"})
    assert dead_letters(r, S, 10).entries[-1].payload == Payload(None, None, None, "no payload")


def test_named_dead_letters_once_each_and_none_for_the_missing(r: redis.Redis) -> None:
    entry = r.xadd(DLQ, {"payload": "p"}).decode()
    assert list(named_dead_letters(r, S, [entry, "1-0", entry])) == [
        (entry, {b"payload": b"p"}),
        ("1-0", None),
    ]


def test_every_dead_letter_reads_all_in_batches_and_not_what_arrives_meanwhile(r: redis.Redis) -> None:
    assert list(every_dead_letter(r, S)) == []
    ids = [r.xadd(DLQ, {"payload": str(n)}).decode() for n in range(250)]  # more than one batch
    seen = []
    for entry, _fields in every_dead_letter(r, S):
        seen.append(entry)
        if len(seen) == 1:
            r.xadd(DLQ, {"payload": "later"})  # e.g. a replayed task that failed again at once
    assert seen == ids


# -- queue ------------------------------------------------------------------------------------------------


def test_queue_gauges_without_a_stream_or_group(r: redis.Redis) -> None:
    empty = queue_gauges(r, S, G)
    assert (empty.length, empty.pending, empty.lag, empty.delayed, empty.dead_letters) == (0, 0, 0, 0, 0)
    Producer(r).submit_many([1, 2], "user_create")  # a stream, still no group: all of it waiting
    nogroup = queue_gauges(r, S, G)
    assert (nogroup.length, nogroup.pending, nogroup.lag) == (2, 0, 2)


def test_queue_gauges_and_stats_count_the_same_queue(any_r: redis.Redis) -> None:
    r = any_r  # Redis 6.2 has no lag in XINFO GROUPS: the gauge cannot say, stats counts
    consumer(r)
    ids = Producer(r).submit_many([1, 2, 3], "user_create")
    r.xreadgroup(G, "c1", {S: ">"}, count=2)
    r.zadd(keys.delayed_set(S), {"9-0|{}": 1})
    r.zadd(keys.schedule_set(S), {"1": 1, "2": 2})
    r.xadd(keys.results_stream(S), {"task_id": "1"})
    r.xadd(DLQ, {"payload": "x"})
    r.set(keys.heartbeat_key(S, G, "d1"), json.dumps({"ts": time.time(), "busy": 1}))
    gauges = queue_gauges(r, S, G)
    assert (gauges.length, gauges.pending, gauges.delayed, gauges.dead_letters) == (3, 2, 1, 1)
    version = r.info("server")["redis_version"]
    assert gauges.lag == (None if version.startswith("6.") else 1)
    stats = queue_stats(r, S, G)
    assert (stats.stream_exists, stats.group_exists, stats.length, stats.pending, stats.lag) == (
        True, True, 3, 2, 1
    )  # fmt: skip
    assert (stats.delayed_retries, stats.dead_letters, stats.results, stats.scheduled_tasks) == (1, 1, 1, 2)
    assert stats.last_delivered_id == ids[1] and stats.oldest_pending_id == ids[0]
    assert stats.oldest_pending_age_s is not None and 0 <= stats.oldest_pending_age_s < 30
    [c] = stats.consumers
    assert (c.name, c.pending) == ("c1", 2) and c.idle_s >= 0
    assert [d.consumer for d in stats.daemons] == ["d1"] and stats.daemons[0].get("busy") == 1


def test_queue_stats_of_an_empty_redis(r: redis.Redis) -> None:
    stats = queue_stats(r, S, G)
    assert (stats.stream, stats.group, stats.stream_exists, stats.group_exists) == (S, G, False, False)
    assert (stats.length, stats.pending, stats.lag, stats.oldest_pending_id) == (0, 0, None, None)
    assert stats.consumers == [] and stats.daemons == []
    r.xadd(S, {"data": "x"})  # a stream without the group
    assert queue_stats(r, S, G).stream_exists and not queue_stats(r, S, G).group_exists


# -- tasks ------------------------------------------------------------------------------------------------


def test_task_states_read_the_go_status_keys_and_the_schedule(r: redis.Redis) -> None:
    r.set(keys.crawl_status_key(1), "success")
    r.set(keys.crawl_message_key(1), "12 items")
    r.set(keys.crawl_status_key(2), "failed")
    r.set(keys.crawl_message_key(2), b"bad \xff byte")
    r.zadd(keys.schedule_set(S), {"1": 1_700_000_000_000})
    states = task_states(r, S, [1, 2, 3])
    assert (states[1].status, states[1].message, states[1].next_run_ms) == ("success", "12 items", 1.7e12)
    assert (states[2].status, states[2].message, states[2].next_run_ms) == ("failed", "bad \ufffd byte", None)
    assert (states[3].status, states[3].message, states[3].next_run_ms) == (None, None, None)
    assert task_states(r, S, []) == {}
