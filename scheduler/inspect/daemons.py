"""Daemons, as their heartbeats show them.

Every daemon writes ``<stream>:heartbeat:<group>:<consumer>`` every ``heartbeat_interval`` (a JSON
object: ``ts``, ``busy``, ``workers``, ``circuit``, ``host``, ``pid`` and identity fields; see
``scheduler.daemon.timers.heartbeat_payload``) with a TTL of three intervals, so a key that exists
belongs to a daemon that ran recently, and its ``ts`` says how recently.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import cast

import redis

from scheduler.taskqueue import keys
from scheduler.taskqueue._redis import text


@dataclass(frozen=True)
class Heartbeat:
    consumer: str
    fields: dict[str, object] | None  # the JSON object as written; None when it is not one
    age_s: float | None  # seconds since its ``ts`` (this machine's clock); None without a usable ``ts``

    def get(self, name: str, default: object = None) -> object:
        return (self.fields or {}).get(name, default)

    def as_dict(self) -> dict[str, object]:
        """The heartbeat's own fields, with ``consumer`` (from the key) and ``age_s`` added."""
        return {**(self.fields or {}), "consumer": self.consumer, "age_s": self.age_s}


def parse_heartbeat(raw: bytes | str | None) -> dict[str, object] | None:
    """The heartbeat JSON object, or None when there is none or it is not a JSON object."""
    if raw is None:
        return None
    try:
        value = json.loads(text(raw))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _heartbeat(consumer: str, raw: bytes | str) -> Heartbeat:
    fields = parse_heartbeat(raw)
    ts = (fields or {}).get("ts")
    age = time.time() - ts if isinstance(ts, int | float) else None
    return Heartbeat(consumer, fields, age)


def heartbeat_of(client: redis.Redis, stream: str, group: str, consumer: str) -> Heartbeat | None:
    """``consumer``'s heartbeat; None when it has none (its daemon is not running)."""
    raw = cast(bytes | None, client.get(keys.heartbeat_key(stream, group, consumer)))
    return None if raw is None else _heartbeat(consumer, raw)


def live_daemons(client: redis.Redis, stream: str, group: str) -> list[Heartbeat]:
    """The readable heartbeats of ``group``, by consumer name (each key expires three intervals after
    its daemon stops)."""
    prefix = keys.heartbeat_key(stream, group, "")
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"  # a glob character in a name is literal
    names = sorted(cast(list[bytes], list(client.scan_iter(match=pattern, count=1000))))
    beats = []
    for name, raw in zip(names, client.mget(names) if names else [], strict=True):
        if raw is not None and (beat := _heartbeat(text(name).removeprefix(prefix), raw)).fields is not None:
            beats.append(beat)
    return beats
