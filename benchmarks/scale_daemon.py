"""The sections of ``python -m benchmarks.scale`` that need the real daemon: drain rate against queue depth,
and the daemon's RSS after many tasks. Each run gets a fresh stage (private Redis, fake crawler, daemon),
so one depth's leftover backlog never lands in the next measurement."""

from __future__ import annotations

import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import redis

from benchmarks import procs
from benchmarks.queues.ours import OursAdapter
from benchmarks.runner import Options, Stage
from scheduler.taskqueue import Producer, keys
from scheduler.taskqueue.message import TaskMessage

CHUNK = 10_000  # entries per pipeline: big enough to be fast, small enough to keep the client's memory low
WARM = range(1, 51)  # the drain runs' warm-up: imports, connections, first calls
FIRST_ID = 1001  # queued ids start here, after every warm-up range
# the throughput suite's stage (private Redis, fake crawler answering 5 items, the daemon at its default
# log level with 8 workers, the results-stream observer); only these fields of the options are read
OPTIONS = Options(tasks=0, concurrency=8, rates=(), latency_s=0.0, warmup=0, items=5, startup_timeout=60.0,
                  throughput_timeout=0.0, keep_logs=False)  # fmt: skip


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@contextmanager
def stage(spec_ids: range) -> Iterator[Stage]:
    """A fresh stage for one run, specs registered for ``spec_ids`` (so one depth's leftover backlog never
    lands in the next measurement); its work directory removed after."""
    st = Stage("ours", OursAdapter(), OPTIONS, spec_ids)
    try:
        with st:
            yield st
    finally:
        shutil.rmtree(st.workdir, ignore_errors=True)


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


def warm_up(st: Stage, client: redis.Redis, ids: range, timeout: float = 60.0) -> None:
    assert st.observer is not None and st.worker is not None
    Producer(client).submit_many(ids, "user_create")
    got = st.observer.wait_for(ids, timeout)
    if got < len(ids):
        raise RuntimeError(f"warm-up: {got}/{len(ids)} done in {timeout:.0f}s\n{st.worker.tail()}")


def drain_rate(depth: int, window: int, registered: int) -> dict[str, float]:
    """Queue ``depth`` entries while the daemon is paused (SIGSTOP, as runner.py's drain phase), resume it
    and time the first completions on the results stream. Only the first ``registered`` ids have a spec:
    the rest are distinct ids the daemon would skip as unknown, queued only to make the stream deep."""
    ids = range(FIRST_ID, FIRST_ID + depth)
    measured = ids[: min(depth, window)]
    with stage(range(1, FIRST_ID + min(depth, registered))) as st:  # the warm-up ids, the first queued
        assert st.observer is not None and st.worker is not None
        client = st.server.client()
        warm_up(st, client, WARM)
        procs.signal_tree(st.worker.pid, signal.SIGSTOP)
        try:
            paused = timed_fill(client, ids)
        finally:
            t0 = time.perf_counter()
            procs.signal_tree(st.worker.pid, signal.SIGCONT)
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


def rss_growth(tasks: int, warm: int = 1000, chunk: int = 2000, backlog: int = 4000) -> dict[str, object]:
    """Warm the daemon with ``warm`` tasks, read VmRSS, push ``tasks`` more through in chunks while it
    runs (never more than ``backlog`` waiting, so the queue is not what grows), read VmRSS again.
    Every task id is distinct and registered, so none is collapsed as a duplicate."""
    warm_ids = range(1, warm + 1)
    ids = range(warm + 1, warm + 1 + tasks)
    with stage(range(1, ids.stop)) as st:
        assert st.observer is not None and st.worker is not None
        client = st.server.client()
        warm_up(st, client, warm_ids, 120.0)
        time.sleep(1.0)
        before = procs.rss_now(st.worker.pid)
        producer, sent = Producer(client), 0
        marks: list[tuple[int, float]] = []  # (tasks done, VmRSS MiB) every tenth of the way
        t0 = time.perf_counter()
        while len(st.observer.done) - warm < tasks:
            finished = len(st.observer.done) - warm
            if sent < tasks and sent - finished <= backlog - chunk:
                producer.submit_many(ids[sent : sent + chunk], "user_create")
                sent = min(tasks, sent + chunk)
            elif time.perf_counter() - t0 > 30 + tasks / 50:
                raise RuntimeError(f"RSS run: {finished}/{tasks} done\n{st.worker.tail()}")
            else:
                time.sleep(0.05)
            if finished >= (len(marks) + 1) * tasks / 10:
                marks.append((finished, round(procs.rss_now(st.worker.pid), 1)))
                rate = finished / (time.perf_counter() - t0)
                progress(f"  rss: {finished}/{tasks} done, {rate:.0f} tasks/s, VmRSS {marks[-1][1]} MiB")
        time.sleep(1.0)
        after = procs.rss_now(st.worker.pid)
    return {"before_mib": before, "after_mib": after, "growth_mib": after - before, "marks": marks}
