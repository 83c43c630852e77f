"""A daemon's parts as ``Daemon`` wires them, not started: for the direct tests of leases, the runner and
the maintenance jobs (each on the tests' real redis-server)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from scheduler.config.load import load_settings
from scheduler.daemon.app import Daemon
from scheduler.daemon.leases import Running

NO_CRAWLER = "127.0.0.1:9"  # tests without a crawl never call it


@contextmanager
def wired_daemons(
    redis_url: str, crawler: str = NO_CRAWLER, connect: bool = False, **defaults: str
) -> Iterator[Callable[..., Daemon]]:
    """``make(name, **env)`` builds a daemon (``connect``: its crawler client started); all are closed on
    the way out."""
    made: list[Daemon] = []

    def make(name: str = "a", **env: str) -> Daemon:
        settings = load_settings(
            env={
                "REDIS_URL": redis_url,
                "APP_CRAWLER_GRPC_ADDR": crawler,
                "APP_CONSUMER_NAME": name,
                "APP_METRICS_PORT": "0",
                **defaults,
                **env,
            }
        )
        daemon = Daemon(settings, handle_signals=False)
        if connect:
            daemon.crawler.start()
        made.append(daemon)
        return daemon

    try:
        yield make
    finally:
        for daemon in made:
            daemon.crawler.close()
            daemon.redis.close()


@contextmanager
def crawling(*runs: Running) -> Iterator[ThreadPoolExecutor]:
    """Worker threads for these runs' crawls; on the way out every one of them is cancelled, so a test that
    fails never waits on a hung crawl."""
    pool = ThreadPoolExecutor(len(runs))
    try:
        yield pool
    finally:
        for running in runs:
            running.token.cancel()
        pool.shutdown(wait=True)


def counter(daemon: Daemon, metric: str) -> float:
    return float(getattr(daemon.metrics, metric)._value.get())
