"""The queue's state as the checks see it, read straight from Redis (never through the proxy)."""

from __future__ import annotations

import time
from typing import Any

import redis

from scheduler.chaos.cluster import GROUP, STREAM
from scheduler.taskqueue import keys


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def is_idle(client: redis.Redis) -> bool:
    """Nothing pending, nothing unread, no retry waiting."""
    last: Any = client.xrevrange(STREAM, "+", "-", count=1)
    groups: Any = client.xinfo_groups(STREAM) if last else []
    group = next((g for g in groups if text(g["name"]) == GROUP), None)
    if last and group is None:
        return False
    if group is not None:
        unread = entry_key(text(group["last-delivered-id"])) < entry_key(text(last[0][0]))
        if int(group["pending"]) or unread:
            return False
    return int(client.zcard(keys.delayed_set(STREAM))) == 0


def quiet_idle(client: redis.Redis) -> bool:
    try:
        return is_idle(client)
    except redis.RedisError:
        return False


def wait_idle(client: redis.Redis, timeout: float) -> bool:
    """Idle on four checks in a row, half a second apart."""
    deadline, streak = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        streak = streak + 1 if quiet_idle(client) else 0
        if streak >= 4:
            return True
        time.sleep(0.5)
    return False


def pending(client: redis.Redis) -> int:
    try:
        return int(client.xpending(STREAM, GROUP)["pending"])
    except redis.ResponseError:
        return 0


def run_markers(client: redis.Redis) -> dict[str, str]:
    """``<stream>:inflight:*`` keys and their values."""
    names = sorted(text(k) for k in client.scan_iter(match=f"{STREAM}:inflight:*", count=1000))
    return {name: text(client.get(name)) for name in names}
