"""The daemon's crawler client: one gRPC channel, a deadline on every call, retries on transient codes.

Retry policy. Only tenacity retries (gRPC's built-in retries are switched off on the channel, so there is
one place that decides and counts). Transient codes are retried with exponential back-off and jitter,
``attempts`` calls at most; anything else raises at once:

* transient: UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNKNOWN (the real crawler reports every
  failure as UNKNOWN: ``blocked_page``, ``rate limit wait timeout``...), ABORTED (by gRPC's own definition
  "retry at a higher level"), INTERNAL (gRPC core maps broken HTTP/2 streams, e.g. a crawler or proxy
  restarting mid-call, to INTERNAL), and CANCELLED when *we* did not cancel (a proxy or the server reset
  the stream: RST_STREAM CANCEL).
* permanent: INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED, FAILED_PRECONDITION,
  UNIMPLEMENTED, and every other code. Retrying them cannot help.

Worst case per task: the daemon requeues a task that failed transiently up to ``max_retry`` times (default
3), and each run makes up to ``attempts`` calls here, so the crawler sees at most
``attempts * (max_retry + 1)`` calls per task: 3 * 4 = 12 with the defaults, taking up to about
``attempts * deadline_s`` (+ back-off) each run.

Call style. Each worker thread makes blocking calls on a channel of its own (gRPC shares one connection
between channels of the same target and options): a blocking call waits on its own completion queue in
the calling thread, where a future-style call needs the channel's event thread to wake the caller (two
thread switches and about 0.1 ms of CPU more per call, measured, docs/BENCHMARKS.md).

Cancellation: ``CancelToken.cancel()`` (from any thread, e.g. on a ``stop`` message) closes the calling
thread's channel, which ends the blocking call in flight at once, and stops the retries; ``fetch`` then
raises ``CrawlCancelledError``. The thread opens a new channel for its next call.

(Just over 300 lines: the call, its retries and its cancellation are one protocol with the crawler.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from scheduler._proto import crawler_pb2, crawler_pb2_grpc
from scheduler.errors import CrawlCancelledError, CrawlerError

logger = logging.getLogger(__name__)

SERVICE_NAME = "crawler.CrawlerService"
NO_ITEMS = "no_items"
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
    }
)

OnCall = Callable[[str, float], None]
_T = TypeVar("_T")


class CancelToken:
    """Set once from any thread; runs the registered cancel callbacks (the in-flight gRPC call's).

    One per task: the Event a back-off sleep waits on is made by the first ``wait`` only (an Event is a
    Condition and a Lock; making one for every task cost 2.6 % of the daemon's GIL time)."""

    __slots__ = ("_callbacks", "_cancelled", "_event", "_lock")

    def __init__(self) -> None:
        self._cancelled = False
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []
        self._event: threading.Event | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            callbacks, self._callbacks = self._callbacks, []
            event = self._event
        if event is not None:
            event.set()
        for callback in callbacks:
            callback()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Sleep up to ``timeout_s``; True as soon as the token is cancelled."""
        with self._lock:  # an Event made here is seen by a later cancel(), which takes the same lock
            if self._cancelled:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout_s)

    def on_cancel(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Run ``callback`` when cancelled (now, if already cancelled); returns a function to unregister."""
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(callback)
                return lambda: self._unregister(callback)
        callback()
        return lambda: None

    def _unregister(self, callback: Callable[[], object]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


@dataclass(frozen=True)
class FetchOutcome:
    response: crawler_pb2.FetchResponse
    attempts: int  # calls made, 1 … attempts

    @property
    def no_items(self) -> bool:
        """An empty search: a success, recorded as ``no_items`` (the real crawler also sets the marker)."""
        return self.response.error_message == NO_ITEMS or not self.response.items


class _Line:
    """One worker thread's channel and stub. Closing it ends the thread's call in flight (CANCELLED):
    the only way to cancel a blocking gRPC call from another thread."""

    __slots__ = ("channel", "closed", "stub")

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.stub = crawler_pb2_grpc.CrawlerServiceStub(channel)
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.channel.close()


class CrawlerClient:
    def __init__(
        self,
        addr: str,
        *,
        deadline_s: float = 120.0,
        attempts: int = 3,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        tls: bool = False,
        tls_ca_file: str | None = None,
        on_call: OnCall | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if deadline_s <= 0:
            raise ValueError("deadline_s must be positive")
        self.addr = addr
        self.deadline_s = deadline_s
        self.attempts = attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.tls = tls
        self.tls_ca_file = tls_ca_file
        self.on_call = on_call
        # one Retrying for every worker thread: tenacity keeps its per-call state thread-local, and the
        # cancel token of the thread's current fetch is found the same way
        self._local = threading.local()
        self._retrying = Retrying(
            stop=stop_after_attempt(attempts),
            # composed rather than wait_exponential_jitter, whose arguments changed across tenacity versions
            wait=wait_exponential(multiplier=backoff_initial_s, max=backoff_max_s)
            + wait_random(0, backoff_initial_s),
            retry=retry_if_exception(lambda exc: isinstance(exc, CrawlerError) and exc.transient),
            sleep=self._sleep,
            before_sleep=_log_retry,
            reraise=True,
        )
        self._channel: grpc.Channel | None = None  # health checks
        self._lines: list[_Line] = []  # every thread's channel, closed by close()
        self._lines_lock = threading.Lock()
        self._credentials: grpc.ChannelCredentials | None = None

    def start(self) -> CrawlerClient:
        """Open the channel for health checks; each worker thread opens its own on its first call."""
        if self.tls:
            ca = Path(self.tls_ca_file).read_bytes() if self.tls_ca_file else None
            self._credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        self._channel = self._open()
        return self

    def _open(self) -> grpc.Channel:
        # tenacity is the only retry layer: built-in retries would multiply attempts and hide them
        options = [("grpc.enable_retries", 0)]
        if self._credentials is not None:
            return grpc.secure_channel(self.addr, self._credentials, options=options)
        return grpc.insecure_channel(self.addr, options=options)

    def _line(self) -> _Line:
        """This thread's channel; a new one if the last was closed by a cancellation."""
        line: _Line | None = getattr(self._local, "line", None)
        if line is not None and not line.closed:
            return line
        with self._lines_lock:  # with close(): a line is either closed by it or never opened
            self._require(self._channel)  # started, not closed
            line = _Line(self._open())
            self._lines = [kept for kept in self._lines if not kept.closed]
            self._lines.append(line)
        self._local.line = line
        return line

    def close(self) -> None:
        with self._lines_lock:
            channel, self._channel = self._channel, None
            lines, self._lines = self._lines, []
        for line in lines:
            line.close()
        if channel is not None:
            channel.close()

    def __enter__(self) -> CrawlerClient:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fetch(self, request: crawler_pb2.FetchRequest, cancel: CancelToken | None = None) -> FetchOutcome:
        """Call FetchItems, retrying transient failures. Raises CrawlerError or CrawlCancelledError."""
        token = cancel or CancelToken()
        try:  # most calls succeed at once: tenacity's state machine is entered only after a failure
            return FetchOutcome(response=self._call_once(request, token), attempts=1)
        except CrawlerError as exc:
            if not exc.transient or self.attempts == 1:
                raise
            failed: CrawlerError | None = exc
        self._local.token = token
        calls = 1

        def attempt() -> crawler_pb2.FetchResponse:
            nonlocal calls, failed
            if failed is not None:  # tenacity's first attempt is the call already made
                first, failed = failed, None
                raise first
            calls += 1
            return self._call_once(request, token)

        response = self._retrying(attempt)
        return FetchOutcome(response=response, attempts=calls)

    def _sleep(self, seconds: float) -> None:
        """tenacity's back-off sleep: ends early, raising, when the thread's fetch is cancelled."""
        token: CancelToken = self._local.token
        if token.wait(seconds):
            raise CrawlCancelledError("cancelled during back-off")

    def health(self, timeout_s: float = 2.0) -> bool:
        """True only when the crawler's grpc.health.v1 service says SERVING; False on anything else.

        The original crawler registers no health service (Check answers UNIMPLEMENTED), so False does not
        by itself mean "down": use it to close the breaker early, and a probe call to learn the rest.
        """
        return self.health_status(timeout_s) == "SERVING"

    def health_status(self, timeout_s: float = 2.0) -> str:
        """``SERVING``, ``NOT_SERVING`` (the crawler says so itself), ``UNREACHABLE`` (no answer), or
        ``UNKNOWN`` (it answers but has no health service, like the original crawler)."""
        channel = self._require(self._channel)
        check = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(check, timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code()
            logger.debug("crawler health check failed: %s", code)
            if code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND):
                return "UNKNOWN"
            return "UNREACHABLE"
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return "SERVING"
        return "NOT_SERVING"

    def _call_once(self, request: crawler_pb2.FetchRequest, token: CancelToken) -> crawler_pb2.FetchResponse:
        line = self._line()
        unregister = token.on_cancel(line.close)  # run at once if already cancelled
        if token.cancelled:
            unregister()
            raise CrawlCancelledError(f"task {request.task_id}: cancelled")
        started = time.monotonic()
        code = "OK"
        try:
            response: crawler_pb2.FetchResponse = line.stub.FetchItems(request, timeout=self.deadline_s)
            return response
        except grpc.RpcError as exc:
            status = exc.code()
            code = status.name
            if token.cancelled:
                raise CrawlCancelledError(f"task {request.task_id}: cancelled") from None
            raise CrawlerError(code, exc.details() or "", transient=status in TRANSIENT_CODES) from None
        except ValueError:  # "Cannot invoke RPC on closed channel!": cancelled just before the call
            code = "CANCELLED"
            if token.cancelled:
                raise CrawlCancelledError(f"task {request.task_id}: cancelled") from None
            raise CrawlerError(code, "channel closed", transient=True) from None  # the client was closed
        finally:
            unregister()
            if token.cancelled:
                # a cancel that took its callbacks before unregister() may still close this line later:
                # never reuse it, or that late close would end the next task's call
                line.close()
            self._report(code, time.monotonic() - started)

    def _report(self, code: str, seconds: float) -> None:
        if self.on_call is None:
            return
        try:
            self.on_call(code, seconds)
        except Exception:  # a broken metrics hook must not fail the crawl
            logger.exception("crawler on_call hook failed")

    @staticmethod
    def _require(thing: _T | None) -> _T:
        if thing is None:
            raise RuntimeError("CrawlerClient is not started")
        return thing


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    logger.warning(
        "crawler call failed (%s), attempt %d, retrying in %.2fs",
        exc.code if isinstance(exc, CrawlerError) else exc,
        state.attempt_number,
        delay,
    )
