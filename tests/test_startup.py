"""scheduler/daemon/startup.py against a real Redis: who may take a consumer name, and how a start-up fails.

Each heartbeat here is what a real daemon writes (``heartbeat_payload``), naming real processes: this one,
a live ``sleep`` child, a child that has exited. Nothing is mocked but a Daemon's ``start`` in the last
test (to make it fail in a way nothing else can).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from scheduler.cli.common import CliError
from scheduler.cli.run_cmd import start_and_run
from scheduler.config.load import load_settings
from scheduler.config.settings import Settings
from scheduler.daemon import startup
from scheduler.daemon.app import Daemon
from scheduler.daemon.startup import StartupError, prepare, process_identity, process_start
from scheduler.daemon.timers import heartbeat_payload
from scheduler.devtools.redis_server import RedisServer, free_port
from scheduler.inspect.daemons import parse_heartbeat
from scheduler.taskqueue import keys

NAME = "worker-a"
KEY = keys.heartbeat_key(keys.DEFAULT_STREAM, keys.DEFAULT_GROUP, NAME)
INTERVAL = 1.0
WINDOW = startup.renewal_window(INTERVAL)


def settings_for(url: str, **env: str) -> Settings:
    return load_settings(
        env={
            "REDIS_URL": url,
            "APP_CONSUMER_NAME": NAME,
            "APP_HEARTBEAT_INTERVAL": f"{INTERVAL}s",
            "APP_METRICS_PORT": "0",
            **env,
        }
    )


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return settings_for(redis_url)


@pytest.fixture
def client(redis_server: RedisServer, r: redis.Redis) -> Iterator[redis.Redis]:
    """The newcomer's own client (a daemon's is not the test's)."""
    c = redis_server.client()
    yield c
    c.close()


@pytest.fixture
def claims() -> Iterator[list[startup.NameClaim]]:
    """Claims a test took: released at the end, so no other test sees them as daemons of this process."""
    taken: list[startup.NameClaim] = []
    yield taken
    for claim in taken:
        claim.release()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def beat(pid: int, host: str | None = None, **identity: object) -> str:
    """A heartbeat as a daemon with this pid writes it: the real payload, its host and pid swapped in."""
    value = json.loads(heartbeat_payload(NAME, 1, 8, "closed", {"token": uuid.uuid4().hex, **identity}))
    value["pid"] = pid
    value["host"] = host or socket.gethostname()
    return json.dumps(value)


def local_identity(pid: int) -> dict[str, object]:
    """What the daemon with that pid on this host would write: this machine's, that process's start."""
    found = process_start(pid)
    assert found is not None, "this test needs /proc"
    return {**{k: v for k, v in process_identity().items() if k != "started"}, "started": found[1]}


def timed_prepare(settings: Settings, client: redis.Redis) -> tuple[startup.NameClaim | None, float]:
    started = time.monotonic()
    claim = prepare(settings, client, threading.Event())
    return claim, time.monotonic() - started


def token_in(r: redis.Redis) -> object:
    return (parse_heartbeat(r.get(KEY)) or {}).get("token")


def renew_until(r: redis.Redis, raw: str, stop: threading.Event) -> threading.Thread:
    """Another daemon that is alive: it rewrites its heartbeat (new ts, same token) every 0.3 s."""

    def loop() -> None:
        while not stop.wait(0.3):
            value = json.loads(raw)
            value["ts"] = time.time()
            r.set(KEY, json.dumps(value), ex=3)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


# -- this host -------------------------------------------------------------------------------------------------


def test_a_free_name_is_claimed_with_a_heartbeat_that_names_this_process(
    settings: Settings, client: redis.Redis, r: redis.Redis, claims: list[startup.NameClaim]
) -> None:
    claim, took = timed_prepare(settings, client)
    assert claim is not None
    assert took < 1.0
    value = parse_heartbeat(r.get(KEY)) or {}
    # the old fields, as `check` and the demo read them, then the identity
    assert value["consumer"] == NAME and value["pid"] == os.getpid() and value["host"] == socket.gethostname()
    assert isinstance(value["ts"], float) and value["busy"] == 0 and value["circuit"] == "closed"
    assert value["token"] == claim.token and value["started"] == process_start(os.getpid())[1]
    assert 0 < r.ttl(KEY) <= 3
    claim.release()  # as at shutdown: ours, so deleted
    assert r.get(KEY) is None and startup.held(client, KEY) is None


def test_a_live_daemon_on_this_host_is_refused_at_once_and_keeps_its_heartbeat(
    settings: Settings, client: redis.Redis, r: redis.Redis, sleeper: subprocess.Popen[bytes]
) -> None:
    theirs = beat(sleeper.pid, **local_identity(sleeper.pid))
    r.set(KEY, theirs, ex=30)
    started = time.monotonic()
    with pytest.raises(StartupError) as refused:
        prepare(settings, client, threading.Event())
    assert time.monotonic() - started < 1.0  # looked at, not waited for
    message = str(refused.value)
    assert f"pid {sleeper.pid} on {socket.gethostname()}" in message
    assert "--consumer" in message and "app.consumer_name" in message and "\n" not in message
    assert r.get(KEY) == theirs.encode()


def test_a_dead_pid_on_this_host_is_taken_over_at_once(
    settings: Settings, client: redis.Redis, r: redis.Redis, claims: list[startup.NameClaim],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    gone = subprocess.Popen(["true"])
    identity = local_identity(gone.pid)  # taken while it lives (it may be a zombie already: same entry)
    gone.wait()
    r.set(KEY, beat(gone.pid, **identity), ex=30)
    with caplog.at_level(logging.WARNING, logger="scheduler.daemon.startup"):
        claim, took = timed_prepare(settings, client)
    assert claim is not None
    claims.append(claim)
    assert took < 1.0 and token_in(r) == claim.token
    assert f"taken over from a dead daemon: pid {gone.pid}" in caplog.text


def test_a_pid_reused_by_another_process_is_not_the_daemon(
    settings: Settings, client: redis.Redis, r: redis.Redis, sleeper: subprocess.Popen[bytes],
    claims: list[startup.NameClaim],
) -> None:  # fmt: skip
    identity = local_identity(sleeper.pid)
    identity["started"] = str(int(str(identity["started"])) - 100)  # the daemon had it a second earlier
    r.set(KEY, beat(sleeper.pid, **identity), ex=30)
    claim, took = timed_prepare(settings, client)
    assert claim is not None
    claims.append(claim)
    assert took < 1.0 and token_in(r) == claim.token


def test_a_heartbeat_naming_this_very_pid_is_a_process_before_this_one(
    settings: Settings, client: redis.Redis, r: redis.Redis, claims: list[startup.NameClaim]
) -> None:
    """A container restarted after kill -9: same host name, same pid (1), same start time even: the token
    differs, and no daemon of this process holds it, so it is the dead one's."""
    r.set(KEY, beat(os.getpid(), **process_identity()), ex=30)
    claim, took = timed_prepare(settings, client)
    assert claim is not None
    claims.append(claim)
    assert took < 1.0 and token_in(r) == claim.token


def test_a_second_daemon_in_this_same_process_is_refused(
    settings: Settings, client: redis.Redis, redis_server: RedisServer, claims: list[startup.NameClaim]
) -> None:
    first = prepare(settings, client, threading.Event())
    assert first is not None
    claims.append(first)
    other = redis_server.client()
    try:
        with pytest.raises(StartupError, match="a daemon in this same process"):
            prepare(settings, other, threading.Event())
    finally:
        other.close()


def test_an_old_heartbeat_without_identity_naming_a_live_pid_is_watched_for_renewal(
    settings: Settings, client: redis.Redis, r: redis.Redis, sleeper: subprocess.Popen[bytes],
    claims: list[startup.NameClaim],
) -> None:  # fmt: skip
    """The heartbeat of an older version (host, pid, ts only) cannot tell a reused pid: it must be renewed
    to count as alive. Not renewed: taken over after one renewal window."""
    old = {"consumer": NAME, "host": socket.gethostname(), "pid": sleeper.pid, "ts": time.time(), "busy": 0,
           "workers": 8, "circuit": "closed"}  # fmt: skip
    r.set(KEY, json.dumps(old), ex=30)
    claim, took = timed_prepare(settings, client)
    assert claim is not None
    claims.append(claim)
    assert WINDOW - 0.1 <= took <= WINDOW + 1.0


# -- another host, another pid namespace ----------------------------------------------------------------------


def test_another_hosts_heartbeat_not_renewed_is_taken_over_after_one_window(
    settings: Settings, client: redis.Redis, r: redis.Redis, claims: list[startup.NameClaim]
) -> None:
    """A pod rescheduled after kill -9 (same name, another node): it waits, at most one window."""
    r.set(KEY, beat(4242, host="node-that-died"), ex=30)
    claim, took = timed_prepare(settings, client)
    assert claim is not None
    claims.append(claim)
    assert WINDOW - 0.1 <= took <= WINDOW + 1.0
    assert token_in(r) == claim.token


def test_another_hosts_renewed_heartbeat_is_refused(
    settings: Settings, client: redis.Redis, r: redis.Redis
) -> None:
    theirs = beat(4242, host="node-b")
    r.set(KEY, theirs, ex=30)
    stop = threading.Event()
    renewer = renew_until(r, theirs, stop)
    try:
        started = time.monotonic()
        with pytest.raises(
            StartupError, match=r"pid 4242 on node-b, whose heartbeat was renewed.*--consumer"
        ):
            prepare(settings, client, threading.Event())
        assert time.monotonic() - started < WINDOW
    finally:
        stop.set()
        renewer.join()
    assert (parse_heartbeat(r.get(KEY)) or {}).get("host") == "node-b"


def test_the_same_host_name_in_another_pid_namespace_is_not_taken_for_this_process(
    settings: Settings, client: redis.Redis, r: redis.Redis
) -> None:
    """Two containers sharing the host's name (host networking), each daemon pid 1: the other's heartbeat
    names our pid, but from another pid namespace; it is alive, and renews."""
    theirs = beat(os.getpid(), **{**process_identity(), "pid_ns": "pid:[1]"})
    r.set(KEY, theirs, ex=30)
    stop = threading.Event()
    renewer = renew_until(r, theirs, stop)
    try:
        with pytest.raises(StartupError, match="whose heartbeat was renewed"):
            prepare(settings, client, threading.Event())
    finally:
        stop.set()
        renewer.join()


def test_a_name_released_while_watched_is_claimed(
    settings: Settings, client: redis.Redis, r: redis.Redis, claims: list[startup.NameClaim]
) -> None:
    r.set(KEY, beat(4242, host="node-b"), ex=30)
    threading.Timer(0.5, lambda: r.delete(KEY)).start()  # its daemon stops cleanly meanwhile
    claim, took = timed_prepare(settings, client)
    assert claim is not None
    claims.append(claim)
    assert took < WINDOW - 0.5


def test_a_stop_while_watching_returns_none_and_leaves_the_heartbeat(
    settings: Settings, client: redis.Redis, r: redis.Redis
) -> None:
    theirs = beat(4242, host="node-b")
    r.set(KEY, theirs, ex=30)
    stopping = threading.Event()
    threading.Timer(0.3, stopping.set).start()
    started = time.monotonic()
    assert prepare(settings, client, stopping) is None
    assert time.monotonic() - started < 1.0
    assert r.get(KEY) == theirs.encode()


# -- after start-up: the heartbeat job and shutdown -------------------------------------------------------------


def test_the_heartbeat_carries_the_claim_says_once_when_it_meets_another_daemon_and_shutdown_spares_it(
    settings: Settings, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = Daemon(settings, crawler=None, handle_signals=False)
    try:
        claim = prepare(settings, daemon.redis, threading.Event())
        assert claim is not None
        daemon.maintenance.heartbeat()
        assert token_in(r) == claim.token
        intruder = beat(4242, host="node-b")
        with caplog.at_level(logging.ERROR, logger="scheduler.daemon.startup"):
            for _ in range(3):
                r.set(KEY, intruder)  # another daemon judged us dead and runs on our name
                daemon.maintenance.heartbeat()
        said = [rec for rec in caplog.records if "also used by pid 4242 on node-b" in rec.getMessage()]
        assert len(said) == 1 and "--consumer" in said[0].getMessage()
        r.set(KEY, intruder)
        daemon.maintenance.clear_heartbeat()  # at shutdown, not ours any more: left alone
        assert r.get(KEY) == intruder.encode()
        assert startup.held(daemon.redis, KEY) is None
    finally:
        daemon.redis.close()


# -- Redis at start-up -------------------------------------------------------------------------------------------


def test_a_refused_password_is_fatal(
    redis_factory: Callable[..., RedisServer], claims: list[startup.NameClaim]
) -> None:
    server = redis_factory(appendonly=False, password="right")
    for url, said in (
        (f"redis://:wrong@127.0.0.1:{server.port}/0", "refused the password"),
        (f"redis://127.0.0.1:{server.port}/0", "refused the password: it wants one; set redis.password"),
    ):
        s = settings_for(url)
        client = s.redis_client()
        try:
            started = time.monotonic()
            with pytest.raises(StartupError, match=said):
                prepare(s, client, threading.Event())
            assert time.monotonic() - started < 2.0  # not retried
        finally:
            client.close()


def test_a_command_refused_by_the_acl_is_fatal(redis_server: RedisServer, r: redis.Redis) -> None:
    r.acl_setuser("no-set", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-set"])
    s = settings_for(f"redis://no-set:pw@127.0.0.1:{redis_server.port}/0")
    client = s.redis_client()
    try:
        with pytest.raises(StartupError, match=r"refused a command the daemon needs \(ACL\)"):
            prepare(s, client, threading.Event())
    finally:
        client.close()
        r.acl_deluser("no-set")


def test_a_redis_not_up_yet_is_waited_for(
    redis_factory: Callable[..., RedisServer], claims: list[startup.NameClaim],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    port = free_port()
    s = settings_for(f"redis://127.0.0.1:{port}/0")
    client = s.redis_client()
    got: list[startup.NameClaim | None] = []
    waiter = threading.Thread(target=lambda: got.append(prepare(s, client, threading.Event())))
    try:
        with caplog.at_level(logging.INFO, logger="scheduler.daemon.startup"):
            waiter.start()
            time.sleep(1.0)
            assert waiter.is_alive() and not got  # still waiting, not failed
            server = redis_factory(appendonly=False, port=port)
            waiter.join(10)
        assert got and got[0] is not None
        claims.append(got[0])
        assert server.client().exists(KEY)
        assert "not reachable yet" in caplog.text and "reachable after" in caplog.text
    finally:
        client.close()


def test_a_stop_while_redis_is_down_returns_none() -> None:
    s = settings_for(f"redis://127.0.0.1:{free_port()}/0")
    client = s.redis_client()
    stopping = threading.Event()
    threading.Timer(0.5, stopping.set).start()
    try:
        started = time.monotonic()
        assert prepare(s, client, stopping) is None
        assert time.monotonic() - started < 3.0
    finally:
        client.close()


# -- the command line ---------------------------------------------------------------------------------------------


def test_an_unforeseen_start_up_failure_is_one_line(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Daemon) -> None:
        raise RuntimeError("the executor would not start")

    monkeypatch.setattr(Daemon, "start", broken)
    with pytest.raises(CliError) as failed:
        start_and_run(settings)
    assert failed.value.code == 1
    assert str(failed.value).startswith(
        "the daemon could not start: RuntimeError: the executor would not start"
    )


def test_python_m_scheduler_run_refused_is_one_line_on_stderr(
    settings: Settings, client: redis.Redis, redis_url: str, claims: list[startup.NameClaim]
) -> None:
    claim = prepare(settings, client, threading.Event())  # a live daemon: this process
    assert claim is not None
    claims.append(claim)
    # in a child process that daemon is on this host, a live pid with the right start time: refused
    env = {**os.environ, "REDIS_URL": redis_url, "APP_METRICS_PORT": "0", "APP_HEARTBEAT_INTERVAL": "1s"}
    done = subprocess.run(
        [sys.executable, "-m", "scheduler", "run", "--consumer", NAME],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"goodshunter-scheduler: error: consumer name {NAME!r} is in use by a live daemon, pid {os.getpid()}"
    )
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_without_a_claim_shutdown_deletes_only_a_heartbeat_this_process_wrote(
    settings: Settings, r: redis.Redis
) -> None:
    """A Maintenance used without start-up's claim (as before claims) still cleans up after itself."""
    daemon = Daemon(settings, handle_signals=False)
    try:
        daemon.maintenance.heartbeat()
        assert (parse_heartbeat(r.get(KEY)) or {}).get("pid") == os.getpid()
        daemon.maintenance.clear_heartbeat()
        assert r.get(KEY) is None
        other = json.dumps({"consumer": NAME, "host": socket.gethostname(), "pid": 4242, "ts": time.time()})
        r.set(KEY, other)
        daemon.maintenance.clear_heartbeat()
        assert r.get(KEY) == other.encode()
    finally:
        daemon.redis.close()
