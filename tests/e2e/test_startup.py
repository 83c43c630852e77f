"""Start-up as a user meets it: ``goodshunter-scheduler run`` subprocesses on one host, real Redis, real
fake crawler. Two daemons with default settings on one host, a status port taken, a Redis not up yet or
refusing the password, a ``kill -9`` and an immediate restart on the same name."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from scheduler.devtools.redis_server import RedisServer, free_port
from scheduler.taskqueue import keys
from scheduler.tasks.registry import TaskSpec
from tests.crawler_fixtures import StubProcess
from tests.e2e.support import (
    FAST_ENV,
    GROUP,
    SCHEDULER,
    STREAM,
    Daemons,
    pending_count,
    register,
    statuses,
    wait_until,
)

pytestmark = pytest.mark.e2e


def env_for(redis_url: str, crawler_addr: str, **env: str) -> dict[str, str]:
    return {**os.environ, **FAST_ENV, "REDIS_URL": redis_url, "APP_CRAWLER_GRPC_ADDR": crawler_addr, **env}


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """``run`` processes a test starts by hand (stderr kept apart): killed at the end if still there."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def spawn(
    processes: list[subprocess.Popen[bytes]], env: dict[str, str], tmp: Path, label: str, *args: str
) -> tuple[subprocess.Popen[bytes], Path]:
    err = tmp / f"{label}.err"
    with open(err, "ab") as out:
        process = subprocess.Popen([str(SCHEDULER), "run", *args], stdout=out, stderr=out, env=env)
    processes.append(process)
    return process, err


def heartbeat_of(client: redis.Redis, name: str) -> bytes | None:
    value: bytes | None = client.get(keys.heartbeat_key(STREAM, GROUP, name))
    return value


def check(env: dict[str, str], name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCHEDULER), "check", "--consumer", name], env=env, capture_output=True, text=True, timeout=20
    )


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def one_error_line(stderr: str) -> str:
    """The CLI's failure: its last line is the error, and nothing on stderr is a traceback."""
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("goodshunter-scheduler: error: "), stderr
    return last


def test_a_status_port_already_taken_is_a_warning_and_the_daemon_works(
    r: redis.Redis, crawler_process: Callable[..., StubProcess], daemons: Callable[..., Daemons]
) -> None:
    with socket.socket() as taken:  # what the first daemon on this host holds: app.metrics_port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        crawler = crawler_process()
        group = daemons(crawler.address, APP_METRICS_HOST="127.0.0.1", APP_METRICS_PORT=str(port))
        second = group.start("second")  # before the fix: exits at start with an OSError traceback
        register(r, [TaskSpec(t, f"item {t}") for t in (1, 2, 3)])
        wait_until(lambda: set(statuses(r, [1, 2, 3]).values()) == {"success"}, 20, what="three crawls")
        env = env_for(group.redis_url, crawler.address)
        healthy = check(env, "second")
        assert healthy.returncode == 0 and healthy.stdout.startswith("ok: consumer second"), healthy
        assert second.process.poll() is None
    logs = second.logs()
    warned = [line for line in logs if line.get("level") == "warning"]
    assert len(warned) == 1, warned
    assert warned[0]["msg"].startswith(f"app.metrics_port {port}: the status server cannot listen")
    assert not [line for line in logs if line.get("level") in ("error", "RAW")], logs
    assert second.stop() == 0


def test_two_daemons_on_defaults_the_second_is_refused_and_a_kill_9_restart_resumes_all_work(
    r: redis.Redis,
    redis_server: RedisServer,
    crawler_process: Callable[..., StubProcess],
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """The user's report: two `run` on one host with default settings (consumer = host name, status port
    9090), then kill -9 of the first. Before the fix the second died with a traceback on the port, or,
    with its own port, shared the first's pending list and work was lost at the kill."""
    crawler = crawler_process("--delay-ms", "3000")
    env = env_for(redis_server.url, crawler.address)
    del env["APP_METRICS_PORT"]  # the defaults: app.metrics_port 9090, app.consumer_name = the host name
    host = socket.gethostname()
    first, first_err = spawn(processes, env, tmp_path, "first")
    wait_until(lambda: heartbeat_of(r, host) or first.poll() is not None, 15, what="first heartbeat")
    assert first.poll() is None, first_err.read_text()
    ids = list(range(1, 41))
    register(r, [TaskSpec(t, f"item {t}") for t in ids])
    wait_until(lambda: pending_count(r) > 0, 10, what="crawls in flight")

    second, second_err = spawn(processes, env, tmp_path, "second")
    assert second.wait(20) == 1
    line = one_error_line(second_err.read_text())
    assert f"consumer name {host!r} is in use by a live daemon, pid {first.pid} on {host}" in line
    assert "--consumer" in line and "app.consumer_name" in line
    assert "daemon started" not in second_err.read_text()
    assert first.poll() is None and heartbeat_of(r, host) is not None  # the refused one took nothing
    assert check(env, host).returncode == 0

    first.kill()  # kill -9 mid-work: entries left in its pending list, its heartbeat left behind
    first.wait(10)
    assert heartbeat_of(r, host) is not None and pending_count(r) > 0
    began = time.monotonic()
    again, again_err = spawn(processes, env, tmp_path, "again")  # a supervisor restarting it at once
    wait_until(
        lambda: b'"daemon started"' in again_err.read_bytes() or again.poll() is not None, 15, what="restart"
    )
    assert again.poll() is None, again_err.read_text()
    assert time.monotonic() - began < 5.0  # this host, that pid is gone: no wait for the heartbeat
    assert b"taken over from a dead daemon" in again_err.read_bytes()
    wait_until(lambda: set(statuses(r, ids).values()) == {"success"}, 60, 0.2, what="every task crawled")
    wait_until(lambda: pending_count(r) == 0, 10, what="nothing left pending")
    again.send_signal(signal.SIGTERM)
    assert again.wait(30) == 0
    assert heartbeat_of(r, host) is None  # its own heartbeat, deleted at a clean stop


def test_a_refused_password_at_start_is_one_line_and_exit_1(
    redis_factory: Callable[..., RedisServer], crawler_process: Callable[..., StubProcess]
) -> None:
    server = redis_factory(appendonly=False, password="right")
    env = env_for(f"redis://:wrong@127.0.0.1:{server.port}/0", "127.0.0.1:1")
    # before the fix: "daemon started", then retried forever (the timeout below)
    done = subprocess.run(
        [str(SCHEDULER), "run", "--consumer", "pw"], env=env, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert (
        line
        == f"goodshunter-scheduler: error: Redis at redis://127.0.0.1:{server.port}/0 refused the password"
    )
    assert "daemon started" not in done.stderr and "wrong" not in done.stderr


def test_a_redis_not_up_at_start_is_waited_for_and_a_stop_meanwhile_exits_0(
    redis_factory: Callable[..., RedisServer],
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    port, status_port = free_port(), free_port()
    env = env_for(f"redis://127.0.0.1:{port}/0", "127.0.0.1:1")
    status = {"APP_METRICS_HOST": "127.0.0.1", "APP_METRICS_PORT": str(status_port)}
    early, early_err = spawn(processes, {**env, **status}, tmp_path, "early", "--consumer", "early")
    quitter, _ = spawn(processes, env, tmp_path, "quitter", "--consumer", "quitter")
    time.sleep(2.0)
    assert early.poll() is None and quitter.poll() is None  # waiting, not failed
    # meanwhile its probes answer: alive (no restart by a liveness probe), not ready
    assert http_status(status_port, "/healthz") == 200
    assert http_status(status_port, "/readyz") == 503
    quitter.send_signal(signal.SIGTERM)
    assert quitter.wait(10) == 0
    server = redis_factory(appendonly=False, port=port)
    client = server.client()
    try:
        wait_until(lambda: client.exists(keys.heartbeat_key(STREAM, GROUP, "early")), 15, what="heartbeat")
        assert not client.exists(keys.heartbeat_key(STREAM, GROUP, "quitter"))
    finally:
        client.close()
    wait_until(lambda: "daemon started" in early_err.read_text(), 10, what="daemon started")
    text = early_err.read_text()
    assert "is not reachable yet" in text and "daemon started" in text and "Traceback" not in text
    early.send_signal(signal.SIGTERM)
    assert early.wait(30) == 0
