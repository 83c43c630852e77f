"""``run --print-config``, ``submit``, ``stop`` and ``task *`` through the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import redis

from scheduler.devtools.redis_server import RedisServer, free_port
from scheduler.taskqueue import keys
from tests.e2e.support import SCHEDULER

STREAM = keys.DEFAULT_STREAM


def run(url: str, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "REDIS_URL": url, **env}
    return subprocess.run(
        [str(SCHEDULER), *args], env=full_env, capture_output=True, text=True, input=stdin, timeout=30
    )


def entries(r: redis.Redis) -> list[dict[str, object]]:
    return [json.loads(fields[b"data"]) for _, fields in r.xrange(STREAM)]


def test_no_command_prints_usage_and_exits_2(redis_url: str) -> None:
    result = run(redis_url)
    assert result.returncode == 2 and "usage:" in result.stderr


def test_help_explains_every_command(redis_url: str) -> None:
    result = run(redis_url, "--help")
    for command in ("run", "submit", "stop", "task"):
        assert command in result.stdout
    assert "add" in run(redis_url, "task", "--help").stdout


def test_task_add_registers_schedules_and_runs(redis_url: str, r: redis.Redis) -> None:
    result = run(redis_url, "task", "add", "--id", "12", "--keyword", "ricoh gr", "--max-price", "90000",
                 "--platform", "yahoo_auction", "--every", "1h30m", "--exclude", "junk")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "task 12: running every 1h30m0s" in result.stdout
    assert [(e["task_id"], e["action"], e["source"]) for e in entries(r)] == [(12, "execute", "user_create")]
    assert r.zscore(keys.schedule_set(STREAM), "12") is not None

    shown = run(redis_url, "task", "show", "12", "--json")
    info = json.loads(shown.stdout)
    assert (info["keyword"], info["platform"], info["max_price"], info["every"]) == (
        "ricoh gr", "yahoo_auction", 90000, "1h30m0s")  # fmt: skip
    assert info["exclude_keywords"] == ["junk"] and info["status"] == "running" and info["next_run"]
    text = run(redis_url, "task", "show", "12")
    assert text.returncode == 0 and "ricoh gr" in text.stdout


def test_task_add_no_run_registers_stopped_without_a_message(redis_url: str, r: redis.Redis) -> None:
    result = run(redis_url, "task", "add", "--id", "3", "--keyword", "x", "--no-run")
    assert result.returncode == 0 and "stopped" in result.stdout
    assert r.xlen(STREAM) == 0 and r.zscore(keys.schedule_set(STREAM), "3") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--id", "1", "--keyword", "x", "--every", "5 minutes"], "--every"),
        (["--id", "1", "--keyword", "x", "--every", "0.5s"], "interval"),
        (["--id", "0", "--keyword", "x"], "task id"),
        (["--id", "1", "--keyword", "   "], "keyword"),
        (["--id", "1", "--keyword", "x", "--min-price", "10", "--max-price", "5"], "max_price"),
        (["--id", "1", "--keyword", "x", "--platform", "ebay"], "platform"),
    ],
)
def test_task_add_bad_input_is_one_clear_line(
    redis_url: str, r: redis.Redis, args: list[str], message: str
) -> None:
    result = run(redis_url, "task", "add", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert r.xlen(STREAM) == 0 and not r.exists(keys.task_spec_key(1))


def test_task_import_all_or_nothing(redis_url: str, r: redis.Redis, tmp_path: Path) -> None:
    good = "\n".join(
        json.dumps({"id": i, "keyword": f"k{i}", "every": "10m", "min_price": 100}) for i in (1, 2, 3)
    )
    bad = good + '\n{"id": 4, "keyword": "k4", "colour": "red"}\n'
    rejected = run(redis_url, "task", "import", "-", stdin=bad)
    assert rejected.returncode == 2 and "line 4" in rejected.stderr and "colour" in rejected.stderr
    assert not r.exists(keys.task_spec_key(1)) and r.xlen(STREAM) == 0

    path = tmp_path / "tasks.jsonl"
    path.write_text(good + "\n\n")
    result = run(redis_url, "task", "import", str(path))
    assert result.returncode == 0 and "imported 3 tasks (3 running)" in result.stdout
    assert sorted(e["task_id"] for e in entries(r)) == [1, 2, 3]
    listed = json.loads(run(redis_url, "task", "list", "--json").stdout)
    assert [(t["task_id"], t["every"], t["min_price"]) for t in listed] == [
        (i, "10m0s", 100) for i in (1, 2, 3)
    ]
    table = run(redis_url, "task", "list")
    assert table.returncode == 0 and "k2" in table.stdout

    assert run(redis_url, "task", "import", str(tmp_path / "missing.jsonl")).returncode == 2
    dup = run(redis_url, "task", "import", "-", stdin=good + "\n" + good)
    assert dup.returncode == 2 and "twice" in dup.stderr


def test_task_show_unknown_exits_3(redis_url: str) -> None:
    result = run(redis_url, "task", "show", "999")
    assert result.returncode == 3 and "999 is not registered" in result.stderr


def test_submit_warns_about_unregistered_tasks(redis_url: str, r: redis.Redis) -> None:
    run(redis_url, "task", "add", "--id", "1", "--keyword", "x", "--no-run")
    result = run(redis_url, "submit", "1", "2", "--source", "periodic")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 2
    assert "not registered" in result.stderr and "2" in result.stderr
    assert [(e["task_id"], e["source"]) for e in entries(r)] == [(1, "periodic"), (2, "periodic")]
    bad = run(redis_url, "submit", "abc")
    assert bad.returncode == 2 and "whole number" in bad.stderr


def test_stop_marks_stopped_and_enqueues_a_stop_message(redis_url: str, r: redis.Redis) -> None:
    run(redis_url, "task", "add", "--id", "8", "--keyword", "x")
    result = run(redis_url, "stop", "8", "9")
    assert result.returncode == 0 and "(not registered)" in result.stdout.splitlines()[1]
    assert [(e["task_id"], e["action"]) for e in entries(r)][-2:] == [(8, "stop"), (9, "stop")]
    assert r.hget(keys.task_spec_key(8), "status") == b"stopped"
    assert r.zscore(keys.schedule_set(STREAM), "8") is None


def test_task_delete_stops_and_forgets(redis_url: str, r: redis.Redis) -> None:
    run(redis_url, "task", "add", "--id", "4", "--keyword", "x", "--every", "1m")
    result = run(redis_url, "task", "delete", "4", "40")
    assert result.returncode == 3
    assert result.stdout.splitlines() == ["task 4: deleted", "task 40: not registered"]
    assert not r.exists(keys.task_spec_key(4)) and r.zscore(keys.schedule_set(STREAM), "4") is None
    assert run(redis_url, "task", "show", "4").returncode == 3


def test_redis_down_is_exit_1_with_one_line_and_no_secret(redis_url: str) -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    for args in (["submit", "1"], ["task", "list"], ["stop", "1"]):
        result = run(url, *args)
        assert result.returncode == 1, args
        assert "unreachable" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "hunter2" not in result.stderr + result.stdout


def test_wrong_password_is_named_without_showing_it(tmp_path: Path) -> None:
    with RedisServer(password="right-pass") as server:
        url = f"redis://:wrong-pass@127.0.0.1:{server.port}/0"
        result = run(url, "task", "list")
    assert result.returncode == 1 and "password" in result.stderr and "wrong-pass" not in result.stderr


def test_print_config_masks_secrets_and_bad_config_names_the_key(redis_url: str, tmp_path: Path) -> None:
    result = run(redis_url, "run", "--print-config", "--workers", "7", REDIS_PASSWORD="s3cr3t-value")
    assert result.returncode == 0
    shown = json.loads(result.stdout)
    assert shown["app.worker_pool_size"] == 7
    assert "s3cr3t-value" not in result.stdout and shown["redis.password"] == "***"
    bad = run(redis_url, "run", "--print-config", APP_WORKER_POOL_SIZE="lots")
    assert (
        bad.returncode == 2 and "app.worker_pool_size" in bad.stderr and "APP_WORKER_POOL_SIZE" in bad.stderr
    )
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"app": {"schedule_interval": "5 minutes"}}))
    bad_file = run(redis_url, "run", "--config", str(config), "--print-config")
    assert bad_file.returncode == 2 and "app.schedule_interval" in bad_file.stderr
    missing = run(redis_url, "run", "--config", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
