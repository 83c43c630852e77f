"""``stats``, ``pending``, ``dlq`` and ``check`` through the installed console script, against real Redis."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from crawler_stub import CrawlerStub
from scheduler.devtools.redis_server import RedisServer, free_port
from scheduler.taskqueue import Consumer, Producer, TaskMessage, decode, keys
from scheduler.taskqueue.message import format_timestamp
from scheduler.taskqueue.scripts import Scripts
from tests.test_http import running_daemon, settings_for

SCHEDULER = Path(sys.executable).parent / "goodshunter-scheduler"
S, G = keys.DEFAULT_STREAM, keys.DEFAULT_GROUP
DLQ = keys.dlq_stream(S)
GOOD = '{"task_id":%d,"action":"execute","timestamp":"2025-12-20T03:03:55.123456+09:00","retry":3,"source":"periodic"}'


def cli(
    url: str, *args: str, cwd: Path | None = None, columns: int = 200, **env: str
) -> subprocess.CompletedProcess[str]:
    """The console script with nothing of this machine's APP_*/REDIS_* settings leaking in."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "REDIS_"))}
    return subprocess.run(
        [str(SCHEDULER), *args],
        env={**clean, "REDIS_URL": url, "COLUMNS": str(columns), **env},
        cwd=cwd or Path(__file__).parent,  # no configs/config.json here
        capture_output=True,
        text=True,
        timeout=30,
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def dead_letter(r: redis.Redis, payload: str, reason: str = "max_retry: UNKNOWN: blocked_page") -> str:
    """A dead letter as CONTRACT §1 defines it (the Go original writes the same fields)."""
    original = f"{int(time.time() * 1000)}-{r.incr('test:seq')}"
    fields = {"original_id": original, "payload": payload, "reason": reason,
              "failed_at": format_timestamp(datetime.now(UTC))}  # fmt: skip
    return str(r.xadd(DLQ, fields).decode())


# -- stats ------------------------------------------------------------------------------------------------


def test_stats_on_an_empty_redis_shows_zeros_and_says_so(r: redis.Redis, redis_url: str) -> None:
    found = as_json(cli(redis_url, "stats", "--json"))
    assert found["stream_exists"] is False and found["group_exists"] is False
    assert [found[k] for k in ("length", "pending", "dead_letters", "delayed_retries", "results")] == [0] * 5
    assert found["consumers"] == [] and found["daemons"] == []
    table = cli(redis_url, "stats")
    assert table.returncode == 0
    assert f"{S}  (does not exist yet)" in table.stdout and "no live daemons" in table.stdout


def test_stats_shows_the_queue_as_redis_cli_would(r: redis.Redis, redis_url: str) -> None:
    Consumer(r, None, S, G, "c1").ensure_group()
    ids = Producer(r).submit_many([1, 2, 3], "user_create")
    r.xreadgroup(G, "c1", {S: ">"}, count=2)  # two pending for c1, one not yet delivered
    r.zadd(keys.delayed_set(S), {"x|{}": 1})
    r.zadd(keys.schedule_set(S), {"1": 1, "2": 2})
    r.xadd(keys.results_stream(S), {"task_id": "1"})
    dead_letter(r, GOOD % 9)
    r.set(keys.heartbeat_key(S, G, "pod-a:1"), json.dumps({"ts": time.time(), "busy": 1, "workers": 8,
                                                           "circuit": "closed", "host": "h1", "pid": 7}))  # fmt: skip
    found = as_json(cli(redis_url, "stats", "--json"))
    assert found["length"] == 3 and found["pending"] == 2 and found["lag"] == 1
    assert found["oldest_pending_id"] == ids[0] and 0 <= found["oldest_pending_age_s"] < 30
    assert (found["delayed_retries"], found["scheduled_tasks"], found["results"], found["dead_letters"]) == (
        1,
        2,
        1,
        1,
    )
    assert found["consumers"][0]["name"] == "c1" and found["consumers"][0]["pending"] == 2
    [daemon] = found["daemons"]
    assert daemon["consumer"] == "pod-a:1" and daemon["busy"] == 1 and daemon["age_s"] < 30
    table = cli(redis_url, "stats").stdout
    for shown in (ids[0], "pod-a:1", "1/8", "closed", "lag (not yet delivered)", "c1"):
        assert shown in table


# -- pending ----------------------------------------------------------------------------------------------


def test_pending_decodes_task_ids_and_tolerates_trimmed_and_poison_entries(
    r: redis.Redis, redis_url: str
) -> None:
    Consumer(r, None, S, G, "c1").ensure_group()
    good = Producer(r).submit_task(42, "user_create")
    trimmed = Producer(r).submit_task(43, "user_create")
    poison = r.xadd(S, {"data": "not json"}).decode()
    r.xreadgroup(G, "c1", {S: ">"}, count=10)
    r.xdel(S, trimmed)
    found = as_json(cli(redis_url, "pending", "--json"))
    assert found["total"] == 3
    rows = {e["id"]: e for e in found["entries"]}
    assert (
        rows[good]["task_id"] == 42 and rows[good]["action"] == "execute" and rows[good]["consumer"] == "c1"
    )
    assert rows[good]["deliveries"] == 1 and rows[good]["idle_s"] >= 0
    assert rows[trimmed]["task_id"] is None and rows[trimmed]["problem"] == "trimmed"
    assert rows[poison]["problem"] == "invalid: bad_json"
    limited = as_json(cli(redis_url, "pending", "--json", "--count", "1"))
    assert [e["id"] for e in limited["entries"]] == [good] and limited["total"] == 3
    table = cli(redis_url, "pending", "--count", "2")
    assert good in table.stdout and "42" in table.stdout and "3 pending, oldest 2 shown" in table.stdout


def test_pending_without_a_group_is_empty_not_an_error(r: redis.Redis, redis_url: str) -> None:
    assert as_json(cli(redis_url, "pending", "--json")) == {"total": 0, "entries": []}
    result = cli(redis_url, "pending")
    assert result.returncode == 0 and "no pending entries" in result.stdout


# -- dlq --------------------------------------------------------------------------------------------------


def test_dlq_list_shows_dead_letters_with_whole_ids_even_on_a_narrow_terminal(
    r: redis.Redis, redis_url: str
) -> None:
    first = dead_letter(r, GOOD % 7)
    poison = dead_letter(
        r, '{"task_id":0,"action":"execute"}', reason="task_id_range: task_id must be in 1..2^63-1, got 0"
    )
    found = as_json(cli(redis_url, "dlq", "list", "--json"))
    assert found["total"] == 2
    a, b = found["entries"]
    assert (a["id"], a["task_id"], a["retry"], a["replayable"], a["reason"]) == (
        first, 7, 3, True, "max_retry: UNKNOWN: blocked_page"
    )  # fmt: skip
    assert a["failed_at"].endswith("Z") and a["original_id"]
    assert (b["id"], b["task_id"], b["replayable"], b["problem"]) == (
        poison,
        None,
        False,
        "invalid: task_id_range",
    )
    narrow = cli(redis_url, "dlq", "list", columns=80)
    assert first in narrow.stdout and poison in narrow.stdout and "2 dead letters" in narrow.stdout
    assert as_json(cli(redis_url, "dlq", "list", "--json", "--count", "1"))["entries"][0]["id"] == first


def test_dlq_replay_requeues_with_retry_zero_and_only_once(r: redis.Redis, redis_url: str) -> None:
    entry = dead_letter(r, GOOD % 7)
    result = cli(redis_url, "dlq", "replay", entry, entry)  # the same id twice is one replay
    assert result.returncode == 0, result.stderr
    assert "replayed 1 dead letter onto" in result.stdout
    assert r.xlen(DLQ) == 0
    new_id, fields = r.xrevrange(S, count=1)[0]
    assert new_id.decode() in result.stdout
    message = decode(fields[b"data"])
    assert (message.task_id, message.retry, message.source) == (7, 0, "periodic")
    assert message.timestamp == decode(GOOD % 7).timestamp  # the original request, not a new one
    again = cli(redis_url, "dlq", "replay", entry)
    assert again.returncode == 3 and "no such dead letter" in again.stderr
    assert r.xlen(S) == 1  # one replay, not two


def test_dlq_replay_all_skips_poison_and_reports_it(r: redis.Redis, redis_url: str) -> None:
    good = [dead_letter(r, GOOD % n) for n in (1, 2, 3)]
    poison = dead_letter(r, "{not json", reason="bad_json: Expecting property name")
    result = cli(redis_url, "dlq", "replay", "--all")
    assert result.returncode == 1
    assert "replayed 3 dead letters" in result.stdout and all(g in result.stdout for g in good)
    assert f"{poison}: not replayable (bad_json); left in place" in result.stderr
    assert [i.decode() for i, _ in r.xrange(DLQ)] == [poison]
    assert cli(redis_url, "dlq", "replay", "--all").returncode == 1  # still there, still not replayable


def test_dlq_replay_of_unknown_ids_is_exit_3_and_replays_the_known_ones(
    r: redis.Redis, redis_url: str
) -> None:
    known = dead_letter(r, GOOD % 5)
    result = cli(redis_url, "dlq", "replay", "1-0", known)
    assert result.returncode == 3
    assert "1-0: no such dead letter" in result.stderr and "replayed 1 dead letter" in result.stdout
    assert r.xlen(DLQ) == 0


def test_the_replay_script_adds_nothing_for_an_id_already_replayed(any_r: redis.Redis) -> None:
    any_r.xadd(DLQ, {"payload": GOOD % 4})
    entry = any_r.xrange(DLQ)[0][0].decode()
    scripts = Scripts(any_r)
    payload = TaskMessage.new(4, "execute").encode()
    first = scripts.run("dlq_replay", [DLQ, S], [entry, payload])
    assert first is not None and scripts.run("dlq_replay", [DLQ, S], [entry, payload]) is None
    assert any_r.xlen(S) == 1 and any_r.xlen(DLQ) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("dlq", "replay"), "give dead-letter IDs or --all"),
        (("dlq", "replay", "--all", "1-0"), "give dead-letter IDs or --all"),
        (("dlq", "replay", "abc"), "not a stream entry id"),
        (("dlq", "list", "--count", "0"), "must be a whole number"),
        (("dlq",), "required: DLQ_COMMAND"),
        ((), "usage: goodshunter-scheduler"),
    ],
)
def test_bad_input_is_usage_exit_2(redis_url: str, args: tuple[str, ...], message: str) -> None:
    result = cli(redis_url, *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_dlq_purge_needs_yes_and_says_how_many_went(r: redis.Redis, redis_url: str) -> None:
    for n in (1, 2):
        dead_letter(r, GOOD % n)
    refused = cli(redis_url, "dlq", "purge")
    assert refused.returncode == 2 and "deletes all 2 dead letters" in refused.stderr and r.xlen(DLQ) == 2
    done = cli(redis_url, "dlq", "purge", "--yes")
    assert done.returncode == 0 and "deleted 2 dead letters" in done.stdout and not r.exists(DLQ)


# -- check ------------------------------------------------------------------------------------------------


def test_check_follows_a_real_daemons_heartbeat(
    r: redis.Redis, redis_url: str, crawler_stub: CrawlerStub
) -> None:
    settings = settings_for(
        redis_url, crawler_stub.address, APP_CONSUMER_NAME="checked", APP_METRICS_PORT="0"
    )
    with running_daemon(settings):
        key = keys.heartbeat_key(S, G, "checked")
        deadline = time.monotonic() + 5
        while not r.exists(key) and time.monotonic() < deadline:
            time.sleep(0.05)
        result = cli(redis_url, "check", "--consumer", "checked", APP_HEARTBEAT_INTERVAL="1s")
        assert result.returncode == 0, result.stderr
        assert (
            result.stdout.startswith("ok: consumer checked heartbeat")
            and "0/4 busy, circuit closed" in result.stdout
        )
        other = cli(redis_url, "check", "--consumer", "someone-else")
        assert other.returncode == 1
        assert (
            other.stderr
            == "goodshunter-scheduler: error: no heartbeat from consumer 'someone-else': its daemon is not running\n"
        )
    gone = cli(redis_url, "check", APP_CONSUMER_NAME="checked")  # the consumer name from the environment
    assert gone.returncode == 1 and "no heartbeat from consumer 'checked'" in gone.stderr


def test_check_fails_on_a_stale_or_unreadable_heartbeat(r: redis.Redis, redis_url: str) -> None:
    key = keys.heartbeat_key(S, G, "old")
    r.set(key, json.dumps({"ts": time.time() - 20, "busy": 0, "workers": 1, "circuit": "closed"}))
    stale = cli(redis_url, "check", "--consumer", "old", APP_HEARTBEAT_INTERVAL="5s")
    # 20 s old when written; a second or two more by the time a loaded machine runs the command
    assert stale.returncode == 1 and re.search(
        r"heartbeat of consumer 'old' is 2[0-3]s old \(limit 15s\)", stale.stderr
    )
    assert cli(redis_url, "check", "--consumer", "old", APP_HEARTBEAT_INTERVAL="10s").returncode == 0
    r.set(key, "garbage")
    broken = cli(redis_url, "check", "--consumer", "old")
    assert broken.returncode == 1 and "unreadable" in broken.stderr


# -- Redis down, secrets ----------------------------------------------------------------------------------

EVERY_COMMAND = [
    ("stats",), ("stats", "--json"), ("pending",), ("dlq", "list"), ("dlq", "replay", "--all"),
    ("dlq", "replay", "1-0"), ("dlq", "purge", "--yes"), ("check",),
]  # fmt: skip


@pytest.mark.parametrize("args", EVERY_COMMAND, ids=" ".join)
def test_redis_down_is_exit_1_with_one_clear_line(args: tuple[str, ...]) -> None:
    started = time.monotonic()
    result = cli(f"redis://127.0.0.1:{free_port()}/0", *args)
    elapsed = time.monotonic() - started
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "is unreachable (ConnectionError)" in result.stderr
    if args == ("check",):
        assert elapsed < 2.0  # a container health check must not hang on a dead Redis


def test_secrets_never_appear_in_any_output(redis_factory: Callable[..., RedisServer]) -> None:
    secret = "s3cr3t-Pa55"
    server = redis_factory(appendonly=False, password=secret)
    client = server.client()
    dead_letter(client, GOOD % 1)
    client.set(keys.heartbeat_key(S, G, "c"), json.dumps({"ts": time.time()}))
    url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
    wrong = f"redis://:wrong-{secret}@127.0.0.1:{server.port}/0"
    outputs = [cli(url, *args) for args in [*EVERY_COMMAND, ("check", "--consumer", "c")]]
    outputs += [cli(wrong, *args) for args in EVERY_COMMAND]
    assert outputs[-1].returncode == 1 and "refused the password" in outputs[-1].stderr
    assert as_json(outputs[1])["redis"] == f"redis://127.0.0.1:{server.port}/0"
    for result in outputs:
        assert secret not in result.stdout + result.stderr
    client.close()
