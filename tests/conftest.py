"""Shared fixtures: a private real redis-server per test session, and factories for more.

Nothing here touches the shared server on 6379. Each test gets an empty database (FLUSHALL before it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from scheduler.redis_server import RedisServer
from tests.crawler_fixtures import crawler_process, crawler_stub  # noqa: F401


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer, r: redis.Redis) -> str:
    return redis_server.url


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A bytes client on the private server, with an empty database."""
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """Extra servers a test may kill and restart; AOF on by default (fault tests)."""
    servers: list[RedisServer] = []

    def make(*, appendonly: bool = True, **kwargs: object) -> RedisServer:
        server = RedisServer(appendonly=appendonly, **kwargs)  # type: ignore[arg-type]
        servers.append(server.start())
        return server

    yield make
    for server in servers:
        server.close()
