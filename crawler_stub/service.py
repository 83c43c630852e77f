"""The fake CrawlerService: scripted answers, a calls record, realistic overlapping search results."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import IO, TypedDict

import grpc

from crawler_stub.script import Script, ScriptError, parse
from scheduler._proto import crawler_pb2, crawler_pb2_grpc

# Each call of a task shifts the result window by this many items: a repeated crawl sees mostly the same
# items and a few new ones on top, like a real search sorted by creation time.
NEW_ITEMS_PER_CALL = 1
DEADLINE_SLACK_S = 0.1


class Call(TypedDict):
    task_id: str
    keyword: str
    code: str  # gRPC status name, "OK" for success
    ts: float  # unix time when the call arrived
    duration_ms: float
    peer: str  # the client's address as gRPC reports it, e.g. ``ipv4:127.0.0.1:50312`` (which daemon)


class CallRecorder:
    """Keeps every call in memory and, optionally, appends it as one JSON line to a file."""

    def __init__(self, path: str | None = None) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._file: IO[str] | None = open(path, "a", encoding="utf-8") if path else None

    def record(self, call: Call) -> None:
        line = json.dumps(call, ensure_ascii=False)
        with self._lock:
            self._calls.append(call)
            if self._file is not None:
                # flushed per line so a test or an operator tailing the file sees a call as soon as it ends
                self._file.write(line + "\n")
                self._file.flush()

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def source_id(keyword: str, index: int, platform: int) -> str:
    """A stable id per (keyword, index), shaped like the sites' ids (``m`` + 11 digits for Mercari)."""
    digest = hashlib.sha256(f"{keyword}\0{index}".encode()).digest()
    prefix = "y" if platform == crawler_pb2.PLATFORM_YAHOO_AUCTION else "m"
    return f"{prefix}{int.from_bytes(digest[:8], 'big') % 10**11:011d}"


def make_items(request: crawler_pb2.FetchRequest, call_number: int, count: int) -> list[crawler_pb2.Item]:
    """``count`` items, newest first, from a window that moves by NEW_ITEMS_PER_CALL each call."""
    platform = request.platform or crawler_pb2.PLATFORM_MERCARI
    low = request.min_price or 300
    high = max(request.max_price or 50_000, low)
    first = (call_number - 1) * NEW_ITEMS_PER_CALL
    items = []
    for index in reversed(range(first, first + count)):
        sid = source_id(request.keyword, index, platform)
        url = (
            f"https://page.auctions.yahoo.co.jp/jp/auction/{sid}"
            if platform == crawler_pb2.PLATFORM_YAHOO_AUCTION
            else f"https://jp.mercari.com/item/{sid}"
        )
        items.append(
            crawler_pb2.Item(
                source_id=sid,
                title=f"{request.keyword} #{index}",
                price=low + int(sid[1:]) % (high - low + 1),
                image_url=f"https://static.example.invalid/{sid}.jpg",
                item_url=url,
                platform=platform,
                status="on_sale",
                currency="JPY",
            )
        )
    return items


class _Outcome(TypedDict):
    code: grpc.StatusCode
    detail: str
    response: crawler_pb2.FetchResponse | None


class CrawlerServicer(crawler_pb2_grpc.CrawlerServiceServicer):
    def __init__(self, recorder: CallRecorder, *, delay_ms: int = 0, items: int = 5) -> None:
        self._recorder = recorder
        self._delay_ms = delay_ms
        self._items = items
        self._lock = threading.Lock()
        self._calls_per_task: dict[str, int] = {}
        self._active = 0

    @property
    def active_calls(self) -> int:
        """Handlers running right now; 0 once hung calls have been cancelled (their threads are free)."""
        with self._lock:
            return self._active

    def FetchItems(
        self, request: crawler_pb2.FetchRequest, context: grpc.ServicerContext
    ) -> crawler_pb2.FetchResponse:
        arrived, started = time.time(), time.monotonic()
        # Set when the RPC ends for any reason (client cancel, deadline, server stop): delays and hangs
        # wait on it, so a call the client gave up on frees its server thread at once.
        ended = threading.Event()
        if not context.add_callback(ended.set):
            ended.set()
        with self._lock:
            self._active += 1
            call_number = self._calls_per_task.get(request.task_id, 0) + 1
            self._calls_per_task[request.task_id] = call_number
        try:
            outcome = self._answer(request, call_number, ended, context)
        finally:
            with self._lock:
                self._active -= 1
        self._recorder.record(
            Call(
                task_id=request.task_id,
                keyword=request.keyword,
                code=outcome["code"].name,
                ts=arrived,
                duration_ms=round((time.monotonic() - started) * 1000, 3),
                peer=context.peer(),
            )
        )
        if outcome["response"] is None:
            context.abort(outcome["code"], outcome["detail"])
        return outcome["response"]

    def _answer(
        self,
        request: crawler_pb2.FetchRequest,
        call_number: int,
        ended: threading.Event,
        context: grpc.ServicerContext,
    ) -> _Outcome:
        try:
            script = parse(request.keyword)
        except ScriptError as exc:
            return _Outcome(code=grpc.StatusCode.INVALID_ARGUMENT, detail=str(exc), response=None)
        delay_ms = self._delay_ms if script.delay_ms is None else script.delay_ms
        if script.hang:
            ended.wait()
        elif delay_ms > 0:
            ended.wait(delay_ms / 1000)
        if ended.is_set():
            return _ended(context)
        if script.fails_on(call_number):
            assert script.fail is not None
            detail = f"stub: scripted {script.fail.name} (call {call_number} of task {request.task_id})"
            return _Outcome(code=script.fail, detail=detail, response=None)
        response = self._search(request, script, call_number)
        return _Outcome(code=grpc.StatusCode.OK, detail="", response=response)

    def _search(
        self, request: crawler_pb2.FetchRequest, script: Script, call_number: int
    ) -> crawler_pb2.FetchResponse:
        count = 0 if script.no_items else (self._items if script.items is None else script.items)
        if request.limit > 0:
            count = min(count, request.limit)
        items = make_items(request, call_number, count)
        # the real crawler answers an empty search with OK, no items and this marker
        return crawler_pb2.FetchResponse(
            items=items, total_found=len(items), error_message="" if items else "no_items"
        )


def _ended(context: grpc.ServicerContext) -> _Outcome:
    """The client went away (or the server is stopping): nobody reads the answer, only the log does."""
    remaining = context.time_remaining()
    # The client's deadline timer fires first and cancels the stream while the server's copy of the
    # deadline (counted from arrival) still has transit time left: call that an expiry too.
    expired = remaining is not None and remaining <= DEADLINE_SLACK_S
    code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    return _Outcome(code=code, detail="", response=crawler_pb2.FetchResponse())
