"""The daemon's HTTP status server: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz`` (readiness).

Liveness asks only "is the read loop still turning?" — restarting the process helps with a wedged loop and
with nothing else. Readiness asks "can this daemon do work now?" (Redis answers; the crawler's circuit is
closed or its health service says SERVING), and its answer is cached for a second so that a probe storm
costs Redis one PING a second, on a client of its own so a probe never queues behind the workers.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    from scheduler.config.settings import Settings
    from scheduler.crawler.breaker import CircuitBreaker
    from scheduler.crawler.client import CrawlerClient

Check = Callable[[], tuple[bool, str]]

log = logging.getLogger(__name__)

# The read loop stamps daemon.last_loop at least every ~1.5 s, even idle or while Redis is down; only a
# loop stuck in one call for this long is dead.
STALL_AFTER_S = 30.0
READY_CACHE_S = 1.0
PROBE_TIMEOUT_S = 1.0


class Health:
    """The daemon's liveness and readiness, from what it is made of (no reference to the Daemon itself)."""

    def __init__(
        self,
        settings: Settings,
        last_loop: Callable[[], float],
        stopping: Callable[[], bool],
        breaker: CircuitBreaker,
        crawler: CrawlerClient,
        *,
        stall_after_s: float = STALL_AFTER_S,
        ready_cache_s: float = READY_CACHE_S,
    ) -> None:
        self.settings = settings
        self.last_loop = last_loop
        self.stopping = stopping
        self.breaker = breaker
        self.crawler = crawler
        self.stall_after_s = stall_after_s
        self.ready_cache_s = ready_cache_s
        self._probe: redis.Redis | None = None
        self._ready_lock = threading.Lock()
        self._ready_at = float("-inf")
        self._ready: tuple[bool, str] = (False, "not checked yet")

    def live(self) -> tuple[bool, str]:
        if self.stopping():
            # the loop has ended on purpose and the drain is bounded by shutdown_grace, which may be longer
            # than the stall limit: a liveness kill now would cut the in-flight crawls short
            return True, "stopping"
        stalled = time.monotonic() - self.last_loop()
        if stalled > self.stall_after_s:
            return False, f"read loop stalled for {stalled:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self.stopping():
            return False, "stopping"
        with self._ready_lock:  # concurrent probes wait for one check instead of each running their own
            if time.monotonic() - self._ready_at >= self.ready_cache_s:
                self._ready = self._check_ready()
                self._ready_at = time.monotonic()
            return self._ready

    def _check_ready(self) -> tuple[bool, str]:
        if self._probe is None:
            # no retry: a probe answers within its timeout, and the next probe asks again
            self._probe = self.settings.redis_client(
                socket_timeout=PROBE_TIMEOUT_S,
                socket_connect_timeout=PROBE_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
                client_name=f"goodshunter-scheduler-probe:{self.settings.consumer_name}",
            )
        try:
            self._probe.ping()
        except redis.RedisError as exc:
            return False, f"redis unreachable ({type(exc).__name__})"
        state = self.breaker.state
        if state != "closed" and not self.crawler.health(timeout_s=PROBE_TIMEOUT_S):
            return False, f"crawler circuit {state}"
        return True, "ok"

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None


class StatusServer:
    """Serves ``/metrics`` from a registry and ``/healthz`` / ``/readyz`` from two checks; on ``sock``
    (a listening socket handed down by a supervisor, ``run --processes``) instead of binding host:port."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        live: Check,
        ready: Check,
        registry: CollectorRegistry,
        sock: socket.socket | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._sock = sock
        self.live = live
        self.ready = ready
        self.registry = registry
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    def start(self) -> StatusServer:
        try:
            self._server = _Server(self, self.host, self._requested_port, self._sock)
        except OSError as exc:
            where = f"{self.host}:{self._requested_port}"
            raise OSError(exc.errno, f"status server cannot listen on {where}: {exc.strerror}") from None
        return self._serve()

    def start_or_warn(self) -> StatusServer | None:
        """``start()``, or one warning line and None: a status port already taken (a second daemon on
        this host with the default port) costs /metrics, /healthz and /readyz, never the daemon's work;
        the heartbeat still serves ``goodshunter-scheduler check``."""
        try:
            self._server = _Server(self, self.host, self._requested_port, self._sock)
        except OSError as exc:
            log.warning(
                "app.metrics_port %d: the status server cannot listen on %s:%d (%s); the daemon runs on "
                "without /metrics, /healthz and /readyz (the heartbeat still answers `goodshunter-scheduler "
                "check`): give each daemon on this host its own app.metrics_port (APP_METRICS_PORT), or 0 "
                "for none",
                self._requested_port, self.host, self._requested_port, exc.strerror or exc,
                extra={"port": self._requested_port, "host": self.host},
            )  # fmt: skip
            return None
        return self._serve()

    def _serve(self) -> StatusServer:
        assert self._server is not None
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True
        )
        self._thread.start()
        log.info("status server listening", extra={"host": self.host, "port": self.port})
        return self

    def stop(self, timeout: float = 2.0) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung client must not keep the process alive at exit
    request_queue_size = 128  # socketserver's 5 drops a burst of probes' SYNs (1 s client retransmit)

    def __init__(self, status: StatusServer, host: str, port: int, sock: socket.socket | None = None) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.status = status
        if sock is None:
            super().__init__((host, port), _Handler)
            return
        # already bound and listening (its owner keeps it across restarts of this process): adopt it
        self.address_family = sock.family
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("status server: error answering %s", client_address[0] if client_address else "?")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        status = self.server.status
        if path == "/metrics":
            # what prometheus_client's own handler does: OpenMetrics when the scraper asks for it
            encode, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(HTTPStatus.OK, encode(status.registry), content_type)
        elif path == "/healthz":
            ok, why = status.live()
            self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, f"{why}\n".encode())
        elif path == "/readyz":
            ok, why = status.ready()
            body = {"ready": True} if ok else {"ready": False, "reason": why}
            code = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(code, json.dumps(body).encode() + b"\n", "application/json")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found: try /metrics, /healthz, /readyz\n")

    def _send(self, code: HTTPStatus, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # a scrape every few seconds would drown the daemon's own log lines
        log.debug("http %s " + format, self.client_address[0], *args)
