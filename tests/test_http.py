"""The status server of a real Daemon, run in this process against real Redis and the real fake crawler."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from crawler_stub import CrawlerStub
from scheduler.config.load import load_settings
from scheduler.config.settings import Settings
from scheduler.daemon.app import Daemon
from scheduler.devtools.redis_server import RedisServer, free_port
from scheduler.inspect.daemons import parse_heartbeat
from scheduler.taskqueue import keys
from scheduler.tasks.lifecycle import Lifecycle
from scheduler.tasks.registry import TaskSpec
from scheduler.web.status import StatusServer

Response = tuple[int, dict[str, str], str]


def settings_for(redis_url: str, crawler_addr: str, **env: str) -> Settings:
    return load_settings(
        env={
            "REDIS_URL": redis_url,
            "APP_CRAWLER_GRPC_ADDR": crawler_addr,
            "APP_CONSUMER_NAME": "status-test",
            "APP_METRICS_HOST": "127.0.0.1",
            "APP_METRICS_PORT": str(free_port()),
            "APP_WORKER_POOL_SIZE": "4",
            "APP_HEARTBEAT_INTERVAL": "1s",
            "APP_SHUTDOWN_GRACE": "2s",
            "APP_CRAWLER_ATTEMPTS": "1",
            "APP_CRAWLER_DEADLINE": "5s",
            **env,
        }
    )


@contextmanager
def running_daemon(settings: Settings) -> Iterator[Daemon]:
    """``Daemon.run()`` in a thread, as ``goodshunter-scheduler run`` does in the main thread."""
    daemon = Daemon(settings, handle_signals=False)
    thread = threading.Thread(target=daemon.run, name="daemon-under-test", daemon=True)
    thread.start()
    assert daemon.started.wait(10), "daemon did not start"
    try:
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(20)
        assert not thread.is_alive(), "daemon did not stop"


def get(port: int, path: str, accept: str | None = None) -> Response:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Accept": accept or "*/*"})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, dict(reply.headers), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return value


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by (name, labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def test_metrics_move_with_the_work_done(
    r: redis.Redis, redis_server: RedisServer, crawler_stub: CrawlerStub
) -> None:
    settings = settings_for(redis_server.url, crawler_stub.address)
    ok = [TaskSpec(task_id, f"item {task_id}") for task_id in range(1, 6)]
    # registered before the daemon starts, so its first gauge refresh already sees all six entries
    Lifecycle(settings, r).register([*ok, TaskSpec(6, "bad;fail=INVALID_ARGUMENT")])
    with running_daemon(settings) as daemon:
        port = daemon.settings.metrics_port

        def done() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            found = samples(get(port, "/metrics")[2])
            processed = found.get(("goodshunter_tasks_processed_total", (("status", "dead_lettered"),)), 0)
            success = found.get(("goodshunter_tasks_processed_total", (("status", "success"),)), 0)
            return found if processed == 1 and success == 5 else None

        found = wait_for(done, 8, "six tasks processed")
        status, headers, _ = get(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert found[("goodshunter_crawler_call_duration_seconds_count", (("code", "OK"),))] == 5
    assert found[("goodshunter_crawler_call_duration_seconds_count", (("code", "INVALID_ARGUMENT"),))] == 1
    assert found[("goodshunter_task_dlq_total", (("reason", "permanent"),))] == 1
    assert found[("goodshunter_task_processing_duration_seconds_count", ())] == 6
    assert found[("goodshunter_task_queue_wait_time_seconds_count", ())] == 6
    assert found[("goodshunter_redis_queue_length", ())] == 6
    assert found[("goodshunter_worker_pool_size", ())] == 4
    assert found[("goodshunter_crawler_circuit_state", ())] == 0
    assert found[("goodshunter_task_retry_total", ())] == 0


def test_scrape_passes_promtool_and_speaks_openmetrics_when_asked(
    r: redis.Redis, redis_server: RedisServer, crawler_stub: CrawlerStub
) -> None:
    settings = settings_for(redis_server.url, crawler_stub.address)
    Lifecycle(settings, r).register([TaskSpec(1, "one"), TaskSpec(2, "two;fail=NOT_FOUND")])
    with running_daemon(settings) as daemon:
        port = daemon.settings.metrics_port
        wait_for(
            lambda: r.xlen("goodshunter:task:queue:dlq") == 1 and r.exists("task:crawl_status:1"), 8, "work"
        )
        text = get(port, "/metrics")[2]
        status, headers, body = get(port, "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n") and "goodshunter_tasks_processed_total" in body
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (CI installs it)")
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    # no finding is acceptable: names, units, _total suffixes and help texts are all as Prometheus advises
    assert (lint.returncode, lint.stdout, lint.stderr) == (0, "", "")


def test_readyz_follows_redis_and_healthz_does_not(
    redis_factory: Callable[..., RedisServer], crawler_stub: CrawlerStub
) -> None:
    server = redis_factory()
    with running_daemon(settings_for(server.url, crawler_stub.address)) as daemon:
        port = daemon.settings.metrics_port
        assert get(port, "/readyz")[0] == 200
        assert json.loads(get(port, "/readyz")[2]) == {"ready": True}
        server.kill()
        _, _, body = wait_for(lambda: (reply := get(port, "/readyz"))[0] == 503 and reply, 5, "503")
        assert json.loads(body) == {"ready": False, "reason": "redis unreachable (ConnectionError)"}
        # liveness must not fail over a Redis outage: restarting the daemon would not bring Redis back
        assert get(port, "/healthz")[0] == 200
        server.restart()
        wait_for(lambda: get(port, "/readyz")[0] == 200, 5, "ready again")
        assert get(port, "/healthz")[0] == 200


def test_readyz_reports_the_crawler_circuit_until_the_crawler_serves_again(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    stub = CrawlerStub(port=0).start()
    crawler_port = stub.port
    settings = settings_for(
        redis_server.url, stub.address, APP_BREAKER_FAILURE_THRESHOLD="1", APP_BREAKER_OPEN_DURATION="30s"
    )
    stub.stop(grace=0)  # the crawler is down: calls fail UNAVAILABLE and the health service is gone
    with running_daemon(settings) as daemon:
        port = daemon.settings.metrics_port
        Lifecycle(settings, r).register([TaskSpec(1, "anything")])
        wait_for(lambda: daemon.breaker.state == "open", 5, "circuit open")
        time.sleep(1.1)  # past the readiness cache
        status, _, body = get(port, "/readyz")
        assert (status, json.loads(body)) == (503, {"ready": False, "reason": "crawler circuit open"})
        assert get(port, "/healthz")[0] == 200
        back = CrawlerStub(port=crawler_port).start()  # SERVING again: ready without waiting for a probe
        try:
            wait_for(lambda: get(port, "/readyz")[0] == 200, 8, "ready with the crawler back")
        finally:
            back.stop(grace=0)


def test_readyz_is_503_while_draining(
    r: redis.Redis, redis_server: RedisServer, crawler_stub: CrawlerStub
) -> None:
    settings = settings_for(redis_server.url, crawler_stub.address, APP_SHUTDOWN_GRACE="2s")
    with running_daemon(settings) as daemon:
        port = daemon.settings.metrics_port
        Lifecycle(settings, r).register([TaskSpec(1, "slow;hang")])
        wait_for(lambda: daemon.slots.busy == 1, 5, "crawl in flight")
        assert get(port, "/readyz")[0] == 200
        daemon.request_stop()  # the hanging crawl keeps the daemon draining for the 2 s grace
        status, _, body = get(port, "/readyz")
        assert (status, json.loads(body)) == (503, {"ready": False, "reason": "stopping"})
        daemon.last_loop = time.monotonic() - 60  # the loop has ended; a long drain is not a hang
        assert get(port, "/healthz")[::2] == (200, "stopping\n")


def status_for(daemon: Daemon, port: int) -> StatusServer:
    """The daemon's own checks behind a status server of the test's (the daemon is not started)."""
    h = daemon.health
    return StatusServer("127.0.0.1", port, live=h.live, ready=h.ready, registry=daemon.metrics.registry)


def test_a_probe_storm_costs_redis_one_ping_a_second(r: redis.Redis, redis_server: RedisServer) -> None:
    daemon = Daemon(settings_for(redis_server.url, "127.0.0.1:1"), handle_signals=False)
    status = status_for(daemon, 0).start()
    try:
        r.config_resetstat()
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _: get(status.port, "/readyz")[0], range(64)))
        elapsed = time.monotonic() - started
        pings = int(r.info("commandstats").get("cmdstat_ping", {}).get("calls", 0))
    finally:
        status.stop()
        daemon.redis.close()
    assert codes == [200] * 64
    assert 1 <= pings <= 1 + int(elapsed)


def test_healthz_fails_when_the_read_loop_stalls_and_unknown_paths_are_404(
    r: redis.Redis,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    daemon = Daemon(settings_for(redis_server.url, "127.0.0.1:1"), handle_signals=False)
    status = status_for(daemon, 0).start()
    try:
        with caplog.at_level(logging.DEBUG, logger="scheduler.web.status"):
            assert get(status.port, "/healthz")[0] == 200
            daemon.last_loop = time.monotonic() - 31  # a loop stuck in one call for 31 s
            code, _, body = get(status.port, "/healthz")
            assert (code, body) == (503, "read loop stalled for 31s\n")
            assert get(status.port, "/nope")[0] == 404
    finally:
        status.stop()
        daemon.redis.close()
    assert "GET /healthz" not in capfd.readouterr().err  # no access log on stderr...
    access = [rec for rec in caplog.records if "GET /healthz" in rec.getMessage()]
    assert access and all(rec.levelno == logging.DEBUG for rec in access)  # ...only at debug


def test_port_zero_picks_a_free_port_and_stop_releases_it(r: redis.Redis, redis_server: RedisServer) -> None:
    daemon = Daemon(settings_for(redis_server.url, "127.0.0.1:1"), handle_signals=False)
    status = status_for(daemon, 0).start()
    port = status.port
    assert port > 0 and get(port, "/healthz")[0] == 200
    with pytest.raises(OSError, match=f"status server cannot listen on 127.0.0.1:{port}"):
        status_for(daemon, port).start()
    status.stop()
    again = status_for(daemon, port).start()  # the listener is gone: the port is free again
    try:
        assert get(port, "/healthz")[0] == 200
    finally:
        again.stop()
        daemon.redis.close()


def test_a_status_port_already_taken_is_one_warning_and_the_daemon_works(
    r: redis.Redis,
    redis_server: RedisServer,
    crawler_stub: CrawlerStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A second daemon on this host with the default app.metrics_port: no status server, all its work."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = settings_for(redis_server.url, crawler_stub.address, APP_METRICS_PORT=str(port))
        with caplog.at_level(logging.WARNING), running_daemon(settings) as daemon:
            assert daemon._http is None
            Lifecycle(settings, r).register([TaskSpec(7, "ok")])
            wait_for(lambda: r.get("task:crawl_status:7") == b"success", 10, "the task crawled")
            heartbeat = keys.heartbeat_key(
                settings.task_queue_stream, settings.task_queue_group, "status-test"
            )
            assert (parse_heartbeat(r.get(heartbeat)) or {}).get("workers") == 4  # `check` reads this
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(
        f"app.metrics_port {port}: the status server cannot listen on 127.0.0.1:{port}"
    )
