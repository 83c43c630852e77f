"""The worker pool: every call runs once, on the pool's threads; shut down, it takes nothing more, drops
what no worker started, and lets the calls in progress finish."""

from __future__ import annotations

import threading

import pytest

from scheduler.daemon.workers import WorkerPool


def test_every_call_runs_once_on_a_pool_thread() -> None:
    pool = WorkerPool(4, name="w")
    seen: list[tuple[int, str]] = []
    lock = threading.Lock()
    done = threading.Semaphore(0)

    def call(n: int) -> None:
        with lock:
            seen.append((n, threading.current_thread().name))
        done.release()

    for n in range(200):
        pool.submit(call, n)
    for _ in range(200):
        assert done.acquire(timeout=5)
    pool.shutdown()
    pool.join(5)
    assert sorted(n for n, _ in seen) == list(range(200))
    assert {name for _, name in seen} <= {f"w_{i}" for i in range(4)}


def test_a_failing_call_keeps_its_worker() -> None:
    """Even SystemExit (a library calling sys.exit()): a worker that ended would leave its share of the
    entries waiting, held, for ever (the slots still count it)."""
    pool = WorkerPool(1)
    ran = threading.Event()

    def boom() -> None:
        raise ValueError("bug")

    def leave() -> None:
        raise SystemExit(3)

    pool.submit(boom)
    pool.submit(leave)
    pool.submit(ran.set)
    assert ran.wait(5)  # the only worker survived the first call
    pool.shutdown()
    pool.join(5)


def test_shutdown_drops_unstarted_calls_refuses_new_ones_and_lets_running_ones_end() -> None:
    pool = WorkerPool(1)
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def slow() -> None:
        started.set()
        release.wait(5)
        finished.append("slow")

    pool.submit(slow)
    assert started.wait(5)
    pool.submit(finished.append, "queued")  # no worker free: waits in the queue
    assert pool.shutdown() == 1
    with pytest.raises(RuntimeError):
        pool.submit(finished.append, "late")
    release.set()
    pool.join(5)
    assert finished == ["slow"]
    assert not any(t.is_alive() for t in pool._threads)
    assert pool.shutdown() == 0  # twice is harmless
