"""The sections of ``python -m benchmarks.scale`` that need the real daemon: drain rate against queue depth,
and the daemon's RSS after many tasks. Each run gets a fresh stage (private Redis, fake crawler, daemon),
so one depth's leftover backlog never lands in the next measurement."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis

from benchmarks import procs
from benchmarks.observer import DoneObserver
from benchmarks.work import KEYWORD
from scheduler.devtools.redis_server import RedisServer
from scheduler.taskqueue import Producer, keys
from scheduler.taskqueue.message import TaskMessage
from scheduler.tasks.registry import RedisTaskRegistry, TaskSpec

REPO = Path(__file__).resolve().parent.parent
CHUNK = 10_000  # entries per pipeline: big enough to be fast, small enough to keep the client's memory low
WARM = range(1, 51)  # the drain runs' warm-up: imports, connections, first calls
FIRST_ID = 1001  # queued ids start here, after every warm-up range


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def daemon_env(redis_url: str, crawler_addr: str) -> dict[str, str]:
    """benchmarks/queues/ours.py's worker_env without APP_LOG_LEVEL: the daemon logs at its default level,
    as it would in production."""
    return {
        "REDIS_URL": redis_url,
        "APP_CRAWLER_GRPC_ADDR": crawler_addr,
        "APP_WORKER_POOL_SIZE": "8",
        "APP_METRICS_PORT": "0",
        "APP_CONSUMER_NAME": "bench",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


@dataclass
class Stage:
    server: RedisServer
    client: redis.Redis
    daemon: procs.Proc
    observer: DoneObserver


@contextmanager
def stage(spec_ids: Sequence[int]) -> Iterator[Stage]:
    """Private Redis, fake crawler, specs for ``spec_ids`` registered (as OursAdapter.prepare does), the
    results-stream observer, then ``python -m scheduler run``; all torn down in reverse order."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    server = RedisServer().start()
    crawler = daemon = observer = None
    try:
        crawler, addr = procs.start_crawler(workdir, 5)
        client = server.client()
        register(client, spec_ids)
        observer = DoneObserver(server.client(), keys.results_stream(keys.DEFAULT_STREAM), b"task_id")
        observer.start()
        argv = [sys.executable, "-m", "scheduler", "run"]
        daemon = procs.start("daemon", argv, daemon_env(server.url, addr), workdir)
        yield Stage(server, client, daemon, observer)
    finally:
        for proc in (daemon, crawler):
            if proc is not None:
                proc.stop()
        if observer is not None:
            observer.stop()
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)


def register(client: redis.Redis, ids: Sequence[int]) -> None:
    registry = RedisTaskRegistry(client)
    for start in range(0, len(ids), 1000):
        registry.put_many(TaskSpec(task_id=i, keyword=KEYWORD) for i in ids[start : start + 1000])


def fill(client: redis.Redis, ids: range, source: str = "user_create") -> None:
    """The exact entry Producer.submit_many writes (one ``data`` field, no MAXLEN), pipelined in chunks.
    One message is encoded and its task id swapped for each entry: encoding a million timestamps would
    take longer than sending them."""
    head, tail = wire_template(source)
    for start in range(0, len(ids), CHUNK):
        pipe = client.pipeline(transaction=False)
        for task_id in ids[start : start + CHUNK]:
            pipe.xadd(keys.DEFAULT_STREAM, {keys.DATA_FIELD: f"{head}{task_id}{tail}"})
        pipe.execute()


def wire_template(source: str) -> tuple[str, str]:
    """TaskMessage.encode() split around its task id (checked against a real encoding)."""
    now, marker = datetime.now(UTC), 918273645546372819
    head, tail = TaskMessage(marker, "execute", now, 0, source).encode().split(str(marker))
    if f"{head}7{tail}" != TaskMessage(7, "execute", now, 0, source).encode():
        raise AssertionError("the wire template does not match TaskMessage.encode()")
    return head, tail


def warm_up(st: Stage, ids: range, timeout: float = 60.0) -> None:
    Producer(st.client).submit_many(ids, "user_create")
    got = st.observer.wait_for(ids, timeout)
    if got < len(ids):
        raise RuntimeError(f"warm-up: {got}/{len(ids)} done in {timeout:.0f}s\n{st.daemon.tail()}")


def drain_rate(depth: int, window: int, registered: int) -> dict[str, float]:
    """Queue ``depth`` entries while the daemon is paused (SIGSTOP, as runner.py's drain phase), resume it
    and time the first completions on the results stream. Only the first ``registered`` ids have a spec:
    the rest are distinct ids the daemon would skip as unknown, queued only to make the stream deep."""
    ids = range(FIRST_ID, FIRST_ID + depth)
    measured = ids[: min(depth, window)]
    specs = [*WARM, *ids[: min(depth, registered)]]
    with stage(specs) as st:
        warm_up(st, WARM)
        os.killpg(st.daemon.pid, signal.SIGSTOP)
        try:
            paused = timed_fill(st.client, ids)
        finally:
            t0 = time.perf_counter()
            os.killpg(st.daemon.pid, signal.SIGCONT)
        st.observer.wait_for(measured, 120.0)
        done = sorted(st.observer.times(measured).values())
    if len(done) < len(measured):
        raise RuntimeError(f"depth {depth}: {len(done)}/{len(measured)} done in 120s")
    rates = {f"rate_first_{k}": k / (done[k - 1] - t0) for k in (1000, window) if k <= len(done)}
    return {**rates, "paused_s": paused}


def timed_fill(client: redis.Redis, ids: range) -> float:
    t0 = time.perf_counter()
    fill(client, ids)
    return time.perf_counter() - t0


def vm_rss_mib(pid: int) -> float:
    """VmRSS (resident now, not the peak) of the daemon's process tree, in MiB."""
    total = 0
    for p in procs.tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def rss_growth(tasks: int, warm: int = 1000, chunk: int = 2000, backlog: int = 4000) -> dict[str, object]:
    """Warm the daemon with ``warm`` tasks, read VmRSS, push ``tasks`` more through in chunks while it
    runs (never more than ``backlog`` waiting, so the queue is not what grows), read VmRSS again.
    Every task id is distinct and registered, so none is collapsed as a duplicate."""
    warm_ids = range(1, warm + 1)
    ids = range(warm + 1, warm + 1 + tasks)
    with stage(range(1, ids.stop)) as st:
        warm_up(st, warm_ids, 120.0)
        time.sleep(1.0)
        before = vm_rss_mib(st.daemon.pid)
        producer, sent = Producer(st.client), 0
        marks: list[tuple[int, float]] = []  # (tasks done, VmRSS MiB) every tenth of the way
        t0 = time.perf_counter()
        while len(st.observer.done) - warm < tasks:
            finished = len(st.observer.done) - warm
            if sent < tasks and sent - finished <= backlog - chunk:
                producer.submit_many(ids[sent : sent + chunk], "user_create")
                sent = min(tasks, sent + chunk)
            elif time.perf_counter() - t0 > 30 + tasks / 50:
                raise RuntimeError(f"RSS run: {finished}/{tasks} done\n{st.daemon.tail()}")
            else:
                time.sleep(0.05)
            if finished >= (len(marks) + 1) * tasks / 10:
                marks.append((finished, round(vm_rss_mib(st.daemon.pid), 1)))
                rate = finished / (time.perf_counter() - t0)
                progress(f"  rss: {finished}/{tasks} done, {rate:.0f} tasks/s, VmRSS {marks[-1][1]} MiB")
        time.sleep(1.0)
        after = vm_rss_mib(st.daemon.pid)
    return {"before_mib": before, "after_mib": after, "growth_mib": after - before, "marks": marks}
