"""Small helpers around redis-py shared by the producer and the consumer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import redis

from scheduler.errors import QueueConnectionError

T = TypeVar("T")


def bytes_client(client: redis.Redis) -> redis.Redis:
    """The same server, with replies as bytes: invalid UTF-8 in an entry must reach the decoder as a
    poison message, not blow up inside redis-py's reply parser."""
    pool = getattr(client, "connection_pool", None)
    if pool is None or not pool.connection_kwargs.get("decode_responses"):
        return client
    kwargs = {**pool.connection_kwargs, "decode_responses": False}
    return redis.Redis(connection_pool=type(pool)(connection_class=pool.connection_class, **kwargs))


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@contextmanager
def connection_errors(what: str) -> Iterator[None]:
    """Turn redis-py's connection failures into the package's QueueConnectionError category."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise unavailable(what, exc) from exc


def unavailable(what: str, exc: Exception) -> QueueConnectionError:
    """The QueueConnectionError for redis-py's connection failure ``exc`` during ``what``."""
    return QueueConnectionError(f"{what}: Redis unavailable ({type(exc).__name__}: {exc})")
