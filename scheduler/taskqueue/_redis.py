"""Small helpers around redis-py shared by the producer and the consumer."""

from __future__ import annotations

from types import TracebackType
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


class connection_errors:
    """Turn redis-py's connection failures into the package's QueueConnectionError category.

    A class, not ``@contextmanager``: it wraps every Redis call of the hot path (a submit's XADD, each
    outcome's write), and a generator-based manager costs twice as much (0.83 vs 0.37 µs)."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            raise QueueConnectionError(
                f"{self.what}: Redis unavailable ({type(exc).__name__}: {exc})"
            ) from exc
