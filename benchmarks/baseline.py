"""The gRPC calls alone: N FetchItems calls with C threads (sync stub) or C coroutines (grpc.aio), one
channel, no queue. Its CPU per call is the floor any worker pays for our work; prints one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import threading
import time
from pathlib import Path

import grpc

from benchmarks.work import DEADLINE_S, request_for
from scheduler._proto import crawler_pb2_grpc


def run_sync(
    addr: str, warm: range, measured: range, concurrency: int, mode: str = "sync"
) -> tuple[float, float]:
    """``sync``: blocking calls; ``future``: ``.future(...).result()`` (what a cancellable call costs);
    ``handoff``: threads hand each call to one asyncio loop thread running grpc.aio (cancellable too)."""
    stub = crawler_pb2_grpc.CrawlerServiceStub(grpc.insecure_channel(addr))
    call = lambda task_id: stub.FetchItems(request_for(task_id), timeout=DEADLINE_S)  # noqa: E731
    if mode == "future":
        call = lambda task_id: stub.FetchItems.future(request_for(task_id), timeout=DEADLINE_S).result()  # noqa: E731
    elif mode == "handoff":
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()

        async def make_stub() -> crawler_pb2_grpc.CrawlerServiceStub:
            return crawler_pb2_grpc.CrawlerServiceStub(grpc.aio.insecure_channel(addr))

        aio_stub = asyncio.run_coroutine_threadsafe(make_stub(), loop).result()

        async def fetch(task_id: int) -> object:
            return await aio_stub.FetchItems(request_for(task_id), timeout=DEADLINE_S)

        call = lambda task_id: asyncio.run_coroutine_threadsafe(fetch(task_id), loop).result()  # noqa: E731

    def phase(ids: range) -> None:
        todo = iter(ids)
        lock = threading.Lock()

        def loop() -> None:
            while True:
                with lock:
                    task_id = next(todo, None)
                if task_id is None:
                    return
                call(task_id)

        threads = [threading.Thread(target=loop) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    phase(warm)
    c0, t0 = cpu(), time.perf_counter()
    phase(measured)
    return cpu() - c0, time.perf_counter() - t0


async def run_aio(addr: str, warm: range, measured: range, concurrency: int) -> tuple[float, float]:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = crawler_pb2_grpc.CrawlerServiceStub(channel)

        async def phase(ids: range) -> None:
            todo = iter(ids)

            async def loop() -> None:
                for task_id in todo:
                    await stub.FetchItems(request_for(task_id), timeout=DEADLINE_S)

            await asyncio.gather(*(loop() for _ in range(concurrency)))

        await phase(warm)
        c0, t0 = cpu(), time.perf_counter()
        await phase(measured)
        return cpu() - c0, time.perf_counter() - t0


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--mode", choices=["sync", "aio", "future", "handoff"], default="sync")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    warm = range(1, args.warmup + 1)
    measured = range(warm.stop, warm.stop + args.tasks)
    if args.mode == "aio":
        cpu_s, seconds = asyncio.run(run_aio(args.addr, warm, measured, args.concurrency))
    else:
        cpu_s, seconds = run_sync(args.addr, warm, measured, args.concurrency, args.mode)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the (large) harness this process was forked from
    status = Path("/proc/self/status").read_text()
    rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    print(json.dumps({"calls": len(measured), "seconds": seconds, "cpu_s": cpu_s, "rss_mib": rss}))


if __name__ == "__main__":
    main()
