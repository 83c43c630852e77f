"""The fake crawler as a real gRPC server: ``CrawlerStub`` for tests and the demo, ``main`` for the CLI."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from crawler_stub.service import Call, CallRecorder, CrawlerServicer
from scheduler._proto import crawler_pb2_grpc
from scheduler.signals import Signals

SERVICE_NAME = "crawler.CrawlerService"
# Hung calls hold a server thread until the client gives up; a large pool keeps a burst of them from
# starving the calls that should be answered (threads are created lazily, so this costs nothing idle).
MAX_WORKERS = 256


class CrawlerStub:
    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        calls_log: str | None = None,
        delay_ms: int = 0,
        items: int = 5,
        max_workers: int = MAX_WORKERS,
        serve_health: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self._calls_log = calls_log
        self._delay_ms = delay_ms
        self._items = items
        self._max_workers = max_workers
        # False behaves like the original crawler, which registers no health service (Check: UNIMPLEMENTED)
        self._serve_health = serve_health
        self._server: grpc.Server | None = None
        self._recorder: CallRecorder | None = None
        self._servicer: CrawlerServicer | None = None
        self._health: health.HealthServicer | None = None

    def start(self) -> CrawlerStub:
        self._recorder = CallRecorder(self._calls_log)
        self._servicer = CrawlerServicer(self._recorder, delay_ms=self._delay_ms, items=self._items)
        self._health = health.HealthServicer()
        pool = ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="crawler-stub")
        server = grpc.server(pool)
        crawler_pb2_grpc.add_CrawlerServiceServicer_to_server(self._servicer, server)
        if self._serve_health:
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        bound = server.add_insecure_port(f"{self.host}:{self.port}")
        if bound == 0:
            raise OSError(f"crawler stub: cannot listen on {self.host}:{self.port}")
        self.port = bound
        server.start()
        self._server = server
        self.set_serving(True)
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def calls(self) -> list[Call]:
        """Every finished call so far, oldest first (a copy)."""
        return self._recorder.calls if self._recorder else []

    def calls_for(self, task_id: str | int) -> list[Call]:
        return [call for call in self.calls if call["task_id"] == str(task_id)]

    @property
    def active_calls(self) -> int:
        return self._servicer.active_calls if self._servicer else 0

    def set_serving(self, serving: bool) -> None:
        """Flip the health status of "" and the crawler service (to exercise the client's breaker)."""
        if self._health is None:
            raise RuntimeError("crawler stub is not started")
        statuses = health_pb2.HealthCheckResponse
        status = statuses.SERVING if serving else statuses.NOT_SERVING
        for service in ("", SERVICE_NAME):
            self._health.set(service, status)

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving; in-flight calls get ``grace`` seconds, then are cancelled (which frees hung ones)."""
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self._recorder is not None:
            self._recorder.close()

    def __enter__(self) -> CrawlerStub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="goodshunter-crawler-stub",
        description="A fake GoodsHunter crawler. Script a call through its keyword: directives separated "
        "by ';' - fail=CODE, fail=CODE*N (first N calls of the task), delay=MS, hang, items=N, no_items.",
    )
    parser.add_argument("--port", type=int, default=50051, help="0 picks a free port (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="default %(default)s")
    parser.add_argument("--calls-log", metavar="FILE", help="append one JSON line per call")
    parser.add_argument("--delay-ms", type=int, default=0, help="base delay of every call")
    parser.add_argument("--items", type=int, default=5, help="items per response (default %(default)s)")
    parser.add_argument(
        "--no-health", action="store_true", help="no health service, like the original crawler"
    )
    return parser.parse_args(argv)


def _force_exit(_name: str, forced: bool) -> None:
    if forced:
        raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    signals = Signals(_force_exit)  # the first SIGTERM/SIGINT stops the server; a second exits at once

    stub = CrawlerStub(
        args.port,
        host=args.host,
        calls_log=args.calls_log,
        delay_ms=args.delay_ms,
        items=args.items,
        serve_health=not args.no_health,
    )
    try:
        stub.start()
    except OSError as exc:
        print(f"goodshunter-crawler-stub: {exc}", file=sys.stderr)
        return 1
    signals.install()
    # the first line is the contract with whoever started us (tests, the demo): they read the port from it
    print(f"listening on {stub.address}", flush=True)
    try:
        while not signals.stop.wait(0.5):
            pass
        stub.stop(grace=0 if signals.forced.is_set() else 1.0)
    finally:
        signals.restore()
    return 0
