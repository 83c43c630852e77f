"""The fake crawler, exercised as a real gRPC server (in-process and as the console script)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crawler_stub import CrawlerStub
from crawler_stub.script import Script, ScriptError, parse
from scheduler._proto import crawler_pb2, crawler_pb2_grpc
from tests.crawler_fixtures import StubProcess

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def wait_for(predicate: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def channel(crawler_stub: CrawlerStub) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(crawler_stub.address) as ch:
        yield ch


@pytest.fixture
def client(channel: grpc.Channel) -> crawler_pb2_grpc.CrawlerServiceStub:
    return crawler_pb2_grpc.CrawlerServiceStub(channel)


def request(
    keyword: str, task_id: str = "1", *, min_price: int = 0, max_price: int = 0, limit: int = 0
) -> crawler_pb2.FetchRequest:
    return crawler_pb2.FetchRequest(
        task_id=task_id, keyword=keyword, min_price=min_price, max_price=max_price, limit=limit
    )


def code_of(client: crawler_pb2_grpc.CrawlerServiceStub, keyword: str, task_id: str = "1") -> str:
    try:
        client.FetchItems(request(keyword, task_id), timeout=5)
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


def test_parse_directives() -> None:
    assert parse("nintendo switch") == Script(text="nintendo switch")
    assert parse("fail=UNKNOWN*2; delay=50;switch") == Script(
        text="switch", fail=grpc.StatusCode.UNKNOWN, fail_times=2, delay_ms=50
    )
    assert parse("hang;items=3;no_items") == Script(hang=True, items=3, no_items=True)
    for bad in ("fail=NOPE", "fail=OK", "delay=abc", "items=-1", "fail=UNKNOWN*x"):
        with pytest.raises(ScriptError):
            parse(bad)


def test_normal_search(crawler_stub: CrawlerStub, client: crawler_pb2_grpc.CrawlerServiceStub) -> None:
    response = client.FetchItems(request("switch", min_price=1000, max_price=2000), timeout=5)
    assert len(response.items) == 5
    assert response.total_found == 5 and response.error_message == ""
    for item in response.items:
        assert item.source_id.startswith("m") and len(item.source_id) == 12
        assert 1000 <= item.price <= 2000
        assert item.item_url == f"https://jp.mercari.com/item/{item.source_id}"
        assert (item.platform, item.status, item.currency) == (crawler_pb2.PLATFORM_MERCARI, "on_sale", "JPY")
    assert [(c["task_id"], c["keyword"], c["code"]) for c in crawler_stub.calls] == [("1", "switch", "OK")]


def test_bad_directive_is_invalid_argument(client: crawler_pb2_grpc.CrawlerServiceStub) -> None:
    assert code_of(client, "fail=NOT_A_CODE") == "INVALID_ARGUMENT"


def test_fail_always(crawler_stub: CrawlerStub, client: crawler_pb2_grpc.CrawlerServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.FetchItems(request("fail=UNAVAILABLE"), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "scripted UNAVAILABLE" in (info.value.details() or "")
    assert [code_of(client, "fail=UNAVAILABLE") for _ in range(3)] == ["UNAVAILABLE"] * 3
    assert [c["code"] for c in crawler_stub.calls] == ["UNAVAILABLE"] * 4


def test_fail_first_n_calls_per_task_id(client: crawler_pb2_grpc.CrawlerServiceStub) -> None:
    keyword = "fail=UNKNOWN*2;switch"
    assert [code_of(client, keyword, "7") for _ in range(3)] == ["UNKNOWN", "UNKNOWN", "OK"]
    # another task with the same script has its own count
    assert [code_of(client, keyword, "8") for _ in range(3)] == ["UNKNOWN", "UNKNOWN", "OK"]
    assert code_of(client, keyword, "7") == "OK"


def test_delay_directive_and_base_delay(crawler_stub: CrawlerStub) -> None:
    with CrawlerStub(delay_ms=150) as slow, grpc.insecure_channel(slow.address) as ch:
        client = crawler_pb2_grpc.CrawlerServiceStub(ch)
        client.FetchItems(request("switch"), timeout=5)
        client.FetchItems(request("delay=0;switch"), timeout=5)  # a directive overrides the base delay
        first, second = slow.calls
    assert first["duration_ms"] >= 150
    assert second["duration_ms"] < 150
    with grpc.insecure_channel(crawler_stub.address) as ch:
        crawler_pb2_grpc.CrawlerServiceStub(ch).FetchItems(request("delay=200"), timeout=5)
    assert crawler_stub.calls[0]["duration_ms"] >= 200


def test_hang_frees_its_thread_at_the_deadline(
    crawler_stub: CrawlerStub, client: crawler_pb2_grpc.CrawlerServiceStub
) -> None:
    futures = [client.FetchItems.future(request("hang", str(i)), timeout=0.3) for i in range(20)]
    assert wait_for(lambda: crawler_stub.active_calls == 20)
    for future in futures:
        assert future.exception().code() is grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[union-attr]
    assert wait_for(lambda: crawler_stub.active_calls == 0 and len(crawler_stub.calls) == 20)
    assert {c["code"] for c in crawler_stub.calls} == {"DEADLINE_EXCEEDED"}
    # the server still answers
    assert code_of(client, "switch") == "OK"


def test_hang_frees_its_thread_when_cancelled(
    crawler_stub: CrawlerStub, client: crawler_pb2_grpc.CrawlerServiceStub
) -> None:
    future = client.FetchItems.future(request("hang"))  # no deadline: only the cancel ends it
    assert wait_for(lambda: crawler_stub.active_calls == 1)
    future.cancel()  # type: ignore[no-untyped-call]
    assert wait_for(lambda: crawler_stub.active_calls == 0 and len(crawler_stub.calls) == 1)
    assert crawler_stub.calls[0]["code"] == "CANCELLED"


def test_items_and_limit(client: crawler_pb2_grpc.CrawlerServiceStub) -> None:
    assert len(client.FetchItems(request("items=12;switch"), timeout=5).items) == 12
    assert len(client.FetchItems(request("items=12;switch", limit=3), timeout=5).items) == 3


@pytest.mark.parametrize("keyword", ["no_items", "items=0"])
def test_no_items_is_ok_with_marker(
    crawler_stub: CrawlerStub, client: crawler_pb2_grpc.CrawlerServiceStub, keyword: str
) -> None:
    response = client.FetchItems(request(keyword), timeout=5)
    assert (len(response.items), response.total_found, response.error_message) == (0, 0, "no_items")
    assert crawler_stub.calls[0]["code"] == "OK"


def test_source_ids_are_stable_and_overlap(crawler_stub: CrawlerStub) -> None:
    def ids(stub: CrawlerStub, keyword: str, task_id: str = "1") -> list[str]:
        with grpc.insecure_channel(stub.address) as ch:
            client = crawler_pb2_grpc.CrawlerServiceStub(ch)
            response = client.FetchItems(request(keyword, task_id), timeout=5)
        return [item.source_id for item in response.items]

    first, second, third = (ids(crawler_stub, "switch") for _ in range(3))
    assert len(set(first)) == 5
    assert second[1:] == first[:-1] and second[0] not in first  # one new item on top, the oldest dropped
    assert len(set(third) & set(first)) == 3
    with CrawlerStub() as other:  # same keyword on a fresh crawler: the same ids
        assert ids(other, "switch") == first
    assert not set(ids(crawler_stub, "playstation", "2")) & set(first)


def test_calls_log_is_one_json_line_per_call(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    with CrawlerStub(calls_log=str(log)) as stub, grpc.insecure_channel(stub.address) as ch:
        client = crawler_pb2_grpc.CrawlerServiceStub(ch)
        before = time.time()
        assert code_of(client, "switch", "41") == "OK"
        # flushed per line: readable while the stub still runs
        lines = log.read_text().splitlines()
        assert len(lines) == 1
        assert code_of(client, "fail=NOT_FOUND", "42") == "NOT_FOUND"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [set(r) for r in records] == [{"task_id", "keyword", "code", "ts", "duration_ms", "peer"}] * 2
    assert [(r["task_id"], r["keyword"], r["code"]) for r in records] == [
        ("41", "switch", "OK"),
        ("42", "fail=NOT_FOUND", "NOT_FOUND"),
    ]
    assert before <= records[0]["ts"] <= records[1]["ts"] <= time.time()
    assert all(isinstance(r["duration_ms"], float) for r in records)


def test_health_service(crawler_stub: CrawlerStub, channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    def status(service: str) -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status  # type: ignore[no-any-return]

    assert status("") == status("crawler.CrawlerService") == SERVING
    crawler_stub.set_serving(False)
    assert status("") == status("crawler.CrawlerService") == NOT_SERVING
    crawler_stub.set_serving(True)
    assert status("crawler.CrawlerService") == SERVING


def test_calls_log_from_concurrent_calls(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    with CrawlerStub(calls_log=str(log)) as stub, grpc.insecure_channel(stub.address) as ch:
        client = crawler_pb2_grpc.CrawlerServiceStub(ch)
        futures = [client.FetchItems.future(request("delay=20", str(i)), timeout=5) for i in range(50)]
        for future in futures:
            future.result()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(int(r["task_id"]) for r in records) == list(range(50))


def test_without_health_service_like_the_original_crawler() -> None:
    with CrawlerStub(serve_health=False) as stub, grpc.insecure_channel(stub.address) as ch:
        with pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert code_of(crawler_pb2_grpc.CrawlerServiceStub(ch), "switch") == "OK"


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_console_script_serves_and_exits_cleanly_on_signal(
    crawler_process: Callable[..., StubProcess], tmp_path: Path, signum: signal.Signals
) -> None:
    log = tmp_path / "calls.jsonl"
    stub = crawler_process("--calls-log", str(log), "--items", "2")
    assert stub.port > 0
    with grpc.insecure_channel(stub.address) as ch:
        response = crawler_pb2_grpc.CrawlerServiceStub(ch).FetchItems(request("switch", "5"), timeout=5)
        assert len(response.items) == 2
        check = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert check.status == SERVING
    stub.process.send_signal(signum)
    assert stub.process.wait(timeout=5) == 0
    assert json.loads(log.read_text())["task_id"] == "5"


@pytest.mark.e2e
def test_python_dash_m_runs_the_same_program() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crawler_stub", "--help"], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0
    assert "goodshunter-crawler-stub" in result.stdout and "fail=CODE*N" in result.stdout
