"""The crawler client against the real fake crawler: retries, deadlines, cancellation, health."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from crawler_stub import CrawlerStub
from scheduler._proto import crawler_pb2
from scheduler.crawler.client import CancelToken, CrawlerClient
from scheduler.errors import CrawlCancelledError, CrawlerError

ClientFactory = Callable[..., CrawlerClient]


@pytest.fixture
def on_call_log() -> list[tuple[str, float]]:
    return []


@pytest.fixture
def make_client(crawler_stub: CrawlerStub, on_call_log: list[tuple[str, float]]) -> Iterator[ClientFactory]:
    clients: list[CrawlerClient] = []

    def make(**kwargs: object) -> CrawlerClient:
        settings: dict[str, object] = {
            "deadline_s": 5.0,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            "on_call": lambda code, seconds: on_call_log.append((code, seconds)),
        }
        settings.update(kwargs)
        client = CrawlerClient(crawler_stub.address, **settings).start()  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: ClientFactory) -> CrawlerClient:
    return make_client()


def request(keyword: str, task_id: int = 1) -> crawler_pb2.FetchRequest:
    return crawler_pb2.FetchRequest(
        task_id=str(task_id), keyword=keyword, platform=crawler_pb2.PLATFORM_MERCARI
    )


def wait_for(predicate: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_success(
    client: CrawlerClient, crawler_stub: CrawlerStub, on_call_log: list[tuple[str, float]]
) -> None:
    outcome = client.fetch(request("switch"))
    assert (outcome.attempts, outcome.no_items) == (1, False)
    assert len(outcome.response.items) == 5
    assert [c["code"] for c in crawler_stub.calls] == ["OK"]
    assert [code for code, _ in on_call_log] == ["OK"]
    assert on_call_log[0][1] > 0


@pytest.mark.parametrize("keyword", ["no_items", "items=0"])
def test_no_items_is_a_success(client: CrawlerClient, keyword: str) -> None:
    outcome = client.fetch(request(keyword))
    assert (outcome.attempts, outcome.no_items) == (1, True)


def test_transient_failures_are_retried_until_success(
    client: CrawlerClient, crawler_stub: CrawlerStub, on_call_log: list[tuple[str, float]]
) -> None:
    outcome = client.fetch(request("fail=UNKNOWN*2", task_id=7))
    assert outcome.attempts == 3
    assert [c["code"] for c in crawler_stub.calls_for(7)] == ["UNKNOWN", "UNKNOWN", "OK"]
    assert [code for code, _ in on_call_log] == ["UNKNOWN", "UNKNOWN", "OK"]


@pytest.mark.parametrize(
    "code",
    [
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "FAILED_PRECONDITION",
        "UNIMPLEMENTED",
        "OUT_OF_RANGE",
        "ALREADY_EXISTS",
        "DATA_LOSS",
    ],
)
def test_permanent_codes_raise_after_one_call(
    client: CrawlerClient, crawler_stub: CrawlerStub, code: str
) -> None:
    with pytest.raises(CrawlerError) as info:
        client.fetch(request(f"fail={code}"))
    assert (info.value.code, info.value.transient) == (code, False)
    assert f"scripted {code}" in info.value.detail
    assert len(crawler_stub.calls) == 1


@pytest.mark.parametrize(
    "code", ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "UNKNOWN", "DEADLINE_EXCEEDED", "ABORTED", "INTERNAL"]
)
def test_transient_codes_raise_after_exactly_attempts_calls(
    make_client: ClientFactory, crawler_stub: CrawlerStub, code: str
) -> None:
    client = make_client(attempts=4)
    with pytest.raises(CrawlerError) as info:
        client.fetch(request(f"fail={code}"))
    assert (info.value.code, info.value.transient) == (code, True)
    assert [c["code"] for c in crawler_stub.calls] == [code] * 4


def test_hang_hits_the_deadline_on_every_attempt(
    make_client: ClientFactory, crawler_stub: CrawlerStub
) -> None:
    client = make_client(deadline_s=0.5, attempts=3)
    started = time.monotonic()
    with pytest.raises(CrawlerError) as info:
        client.fetch(request("hang"))
    elapsed = time.monotonic() - started
    assert (info.value.code, info.value.transient) == ("DEADLINE_EXCEEDED", True)
    assert 1.5 <= elapsed < 3.0  # 3 deadlines of 0.5 s plus two short back-offs
    assert wait_for(lambda: len(crawler_stub.calls) == 3)
    assert {c["code"] for c in crawler_stub.calls} == {"DEADLINE_EXCEEDED"}


def test_hung_calls_leak_no_threads(make_client: ClientFactory, crawler_stub: CrawlerStub) -> None:
    client = make_client(deadline_s=0.2, attempts=1)

    def hang_batch(first_task: int) -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(client.fetch, request("hang", first_task + i)) for i in range(8)]
            for future in futures:
                with pytest.raises(CrawlerError):
                    future.result()
        assert wait_for(lambda: crawler_stub.active_calls == 0)  # every server thread was freed

    hang_batch(100)  # warm-up: the server's pool grows to the batch size once
    baseline = threading.active_count()
    for batch in range(3):
        hang_batch(200 + 10 * batch)
    assert threading.active_count() <= baseline
    assert len(crawler_stub.calls) == 32
    assert client.fetch(request("switch")).attempts == 1


def test_cancel_from_another_thread_stops_the_call_and_the_retries(
    client: CrawlerClient, crawler_stub: CrawlerStub, on_call_log: list[tuple[str, float]]
) -> None:
    token = CancelToken()
    threading.Timer(0.2, token.cancel).start()
    started = time.monotonic()
    with pytest.raises(CrawlCancelledError):
        client.fetch(request("hang"), cancel=token)
    assert time.monotonic() - started < 1.0
    assert wait_for(lambda: len(crawler_stub.calls) == 1)
    assert crawler_stub.calls[0]["code"] == "CANCELLED"
    assert wait_for(lambda: crawler_stub.active_calls == 0)
    assert [code for code, _ in on_call_log] == ["CANCELLED"]
    time.sleep(0.1)  # a retry would have been sent by now
    assert len(crawler_stub.calls) == 1


def test_cancel_during_back_off(make_client: ClientFactory, crawler_stub: CrawlerStub) -> None:
    client = make_client(backoff_initial_s=5.0, backoff_max_s=5.0)
    token = CancelToken()
    threading.Timer(0.2, token.cancel).start()
    started = time.monotonic()
    with pytest.raises(CrawlCancelledError):
        client.fetch(request("fail=UNAVAILABLE"), cancel=token)
    assert time.monotonic() - started < 1.0
    assert len(crawler_stub.calls) == 1


def test_cancelled_token_makes_no_call(client: CrawlerClient, crawler_stub: CrawlerStub) -> None:
    token = CancelToken()
    token.cancel()
    token.cancel()  # idempotent
    with pytest.raises(CrawlCancelledError):
        client.fetch(request("switch"), cancel=token)
    assert crawler_stub.calls == []


def test_cancel_token_callbacks() -> None:
    token = CancelToken()
    seen: list[str] = []
    unregister = token.on_cancel(lambda: seen.append("a"))
    token.on_cancel(lambda: seen.append("b"))
    unregister()
    assert not token.cancelled and not token.wait(0)
    token.cancel()
    assert token.cancelled and token.wait(0)
    token.on_cancel(lambda: seen.append("late"))  # already cancelled: runs at once
    assert seen == ["b", "late"]


def test_a_failing_on_call_hook_does_not_fail_the_crawl(make_client: ClientFactory) -> None:
    def broken(code: str, seconds: float) -> None:
        raise RuntimeError("metrics down")

    assert make_client(on_call=broken).fetch(request("switch")).attempts == 1


def test_health(client: CrawlerClient, crawler_stub: CrawlerStub) -> None:
    assert client.health(timeout_s=2)
    crawler_stub.set_serving(False)
    assert not client.health(timeout_s=2)
    crawler_stub.set_serving(True)
    assert client.health(timeout_s=2)
    crawler_stub.stop(grace=0)
    assert not client.health(timeout_s=0.5)


def test_health_without_a_health_service_is_false_but_fetch_works() -> None:
    # the original crawler registers no grpc.health.v1 service: Check answers UNIMPLEMENTED, so the
    # daemon must learn that the crawler is back from a probe call, not from health()
    with CrawlerStub(serve_health=False) as stub, CrawlerClient(stub.address) as client:
        assert not client.health(timeout_s=2)
        assert client.fetch(request("switch")).attempts == 1


def test_crawler_down_is_transient() -> None:
    with CrawlerStub() as stub:
        address = stub.address
    with CrawlerClient(address, attempts=2, backoff_initial_s=0.01, deadline_s=2) as client:
        with pytest.raises(CrawlerError) as info:
            client.fetch(request("switch"))
        assert (info.value.code, info.value.transient) == ("UNAVAILABLE", True)
        assert not client.health(timeout_s=0.5)


def test_tls_to_a_plaintext_server_fails_transiently(crawler_stub: CrawlerStub) -> None:
    with CrawlerClient(crawler_stub.address, tls=True, attempts=1, deadline_s=2) as client:
        with pytest.raises(CrawlerError) as info:
            client.fetch(request("switch"))
    assert (info.value.code, info.value.transient) == ("UNAVAILABLE", True)
    assert crawler_stub.calls == []


def test_not_started_and_bad_settings() -> None:
    client = CrawlerClient("127.0.0.1:1")
    with pytest.raises(RuntimeError):
        client.fetch(request("switch"))
    with pytest.raises(ValueError):
        CrawlerClient("127.0.0.1:1", attempts=0)


def test_a_late_cancel_of_a_finished_call_never_ends_the_next_call_on_that_thread(
    client: CrawlerClient, crawler_stub: CrawlerStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancelling thread takes the callbacks, then is descheduled until the call has returned and the
    worker has started its next task: the late close must hit a line no longer in use (review finding)."""
    taken = threading.Event()
    release = threading.Event()
    original = CancelToken.cancel

    def slow_cancel(token: CancelToken) -> None:
        with token._lock:
            token._cancelled = True
            callbacks, token._callbacks = token._callbacks, []
        taken.set()
        release.wait(5)
        for callback in callbacks:
            callback()

    monkeypatch.setattr(CancelToken, "cancel", slow_cancel)
    first = CancelToken()
    threading.Timer(0.1, first.cancel).start()
    client.fetch(request("delay=300"), cancel=first)  # answered although cancelled meanwhile
    assert taken.is_set()
    second = CancelToken()
    threading.Timer(0.2, release.set).start()  # the late close lands during the next call
    outcome = client.fetch(request("delay=500", task_id=2), cancel=second)
    assert outcome.attempts == 1 and not second.cancelled
    monkeypatch.setattr(CancelToken, "cancel", original)


def test_a_closed_client_opens_no_channel_for_a_thread_that_calls_after(
    make_client: ClientFactory, crawler_stub: CrawlerStub
) -> None:
    """close() ends every thread's channel; a thread calling after it gets an error, never a new channel
    that nothing would close (review finding: the check and the registration were not one step)."""
    client = make_client()
    assert client.fetch(request("switch")).attempts == 1
    client.close()
    with pytest.raises(RuntimeError):
        client.fetch(request("switch"))
    assert len(crawler_stub.calls) == 1


def test_cancel_token_wait_never_misses_a_cancel() -> None:
    """The Event a wait sleeps on is made by that wait: a cancel just before, during or racing it wakes it."""
    assert CancelToken().wait(0.01) is False
    done = CancelToken()
    done.cancel()
    assert done.wait(5) is True  # at once, no Event made
    for _ in range(200):
        token = CancelToken()
        threading.Thread(target=token.cancel).start()
        started = time.monotonic()
        assert token.wait(5) is True
        assert time.monotonic() - started < 1.0
