"""Per-operation CPU costs of the pieces on our daemon's task path, next to the cheaper way of doing the
same thing: each figure is a candidate saving per task. Single-threaded loops in the harness process
against a live Redis and fake crawler; CPU measured with ``time.process_time`` (all threads)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
import redis
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from benchmarks.work import request_for
from scheduler._proto import crawler_pb2_grpc
from scheduler.config.load import load_settings
from scheduler.crawler.client import CrawlerClient
from scheduler.crawler.mapping import build_request, item_dict
from scheduler.errors import QueueConnectionError
from scheduler.taskqueue import TaskMessage, decode
from scheduler.taskqueue.message import format_timestamp
from scheduler.taskqueue.scripts import Scripts
from scheduler.tasks.registry import TaskSpec


def cpu_us(call: Callable[[], object], n: int) -> float:
    for _ in range(min(n, 50)):
        call()
    c0 = time.process_time()
    for _ in range(n):
        call()
    return (time.process_time() - c0) * 1e6 / n


def measure(redis_url: str, crawler_addr: str, n: int = 2000) -> list[tuple[str, float, str, float]]:
    """(what we do, µs, the cheaper alternative, µs)."""
    rows = []
    ours = load_settings(env={"REDIS_URL": redis_url}).redis_client()
    plain = redis.Redis.from_url(redis_url)
    rows.append(("Redis PING via Settings.redis_client (_QuickRetry)", cpu_us(ours.ping, n),
                 "plain redis.Redis PING", cpu_us(plain.ping, n)))  # fmt: skip

    scripts = Scripts(ours)
    script = scripts.trim  # harmless: a missing stream is shorter than any bound, nothing removed

    def pipeline_with_script() -> None:
        pipe = ours.pipeline(transaction=False)
        script(keys=["bench:s"], args=[1000], client=pipe)
        pipe.xack("bench:s", "g", "0-1")
        pipe.execute()  # redis-py first sends SCRIPT EXISTS (a round-trip of its own), then the pipeline

    def pipeline_with_evalsha() -> None:
        pipe = ours.pipeline(transaction=False)
        pipe.evalsha(script.sha, 1, "bench:s", 1000)
        pipe.xack("bench:s", "g", "0-1")
        pipe.execute()

    ours.script_load(script.script)
    rows.append(("pipeline(Script(client=pipe) + XACK).execute()", cpu_us(pipeline_with_script, n),
                 "pipeline(EVALSHA + XACK), NOSCRIPT handled by reloading", cpu_us(pipeline_with_evalsha, n)))  # fmt: skip

    persist = Retrying(
        retry=retry_if_exception_type(QueueConnectionError),
        wait=wait_exponential(multiplier=0.1, max=2.0),
        stop=stop_after_delay(60),
        reraise=True,
    )

    def noop() -> None:
        return None

    rows.append(("tenacity Retrying(...)(action) around each outcome write", cpu_us(lambda: persist(noop), n * 5),
                 "try: action() / except QueueConnectionError: retry", cpu_us(noop, n * 5)))  # fmt: skip

    client = CrawlerClient(crawler_addr).start()
    spec = TaskSpec(task_id=1, keyword="bench")
    request = build_request(spec)
    stub = crawler_pb2_grpc.CrawlerServiceStub(grpc.insecure_channel(crawler_addr))
    rows.append(("CrawlerClient.fetch (tenacity + .future() + CancelToken)", cpu_us(lambda: client.fetch(request), n),
                 "stub.FetchItems(request, timeout=...) (blocking)", cpu_us(lambda: stub.FetchItems(request, timeout=30), n)))  # fmt: skip
    rows.append(("stub.FetchItems.future(...).result()", cpu_us(lambda: stub.FetchItems.future(request, timeout=30).result(), n),
                 "stub.FetchItems(request, timeout=...) (blocking)", cpu_us(lambda: stub.FetchItems(request, timeout=30), n)))  # fmt: skip
    client.close()

    raw = {k.encode(): v.encode() for k, v in spec.to_hash().items()}
    rows.append(("TaskSpec.from_hash (validating dataclass)", cpu_us(lambda: TaskSpec.from_hash(1, raw), n * 5),
                 "build_request(spec) from a ready spec", cpu_us(lambda: build_request(spec), n * 5)))  # fmt: skip

    payload = TaskMessage.new(1, "execute", "user_create").encode().encode()
    rows.append(("decode(TaskMessage JSON) per entry read", cpu_us(lambda: decode(payload), n * 5),
                 "json.loads alone", cpu_us(lambda: json.loads(payload), n * 5)))  # fmt: skip

    response = stub.FetchItems(request_for(1), timeout=30)
    items = list(response.items)

    def results_json() -> str:
        return json.dumps([item_dict(item) for item in items], ensure_ascii=False)

    rows.append(("items → dicts → json.dumps (5 items) + format_timestamp",
                 cpu_us(lambda: (results_json(), format_timestamp(datetime.now(UTC))), n * 5),
                 "response.SerializeToString() stored as is", cpu_us(response.SerializeToString, n * 5)))  # fmt: skip
    ours.close()
    plain.close()
    return rows


def render(rows: list[tuple[str, float, str, float]]) -> list[str]:
    out = ["Per-operation CPU (µs), what the daemon does vs the cheaper equivalent:"]
    width = max(len(r[0]) for r in rows)
    for what, cost, alt, alt_cost in rows:
        out.append(
            f"  {what:{width}}  {cost:8.1f} µs   vs {alt}: {alt_cost:.1f} µs  (saves {cost - alt_cost:.1f})"
        )
    return out
