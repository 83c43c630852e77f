"""The Lua scripts next to this file, registered once per client and called by SHA (EVALSHA, with a
reload on NOSCRIPT after a Redis restart, as redis-py's Script does)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script

NAMES = (
    "requeue",
    "dead_letter",
    "move_due",
    "extend",
    "reclaim",
    "trim",
    "reap_consumers",
    "publish_due",
    "claim_batch",
    "complete_batch",
    "release_run",
    "stop_task",
    "drop_orphan_marker",
    "dlq_replay",
)


@cache
def source(name: str) -> str:
    return resources.files(__package__).joinpath("scripts", f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """One registered Script per .lua file, bound to a client."""

    def __init__(self, client: redis.Redis) -> None:
        self._scripts = {name: client.register_script(source(name)) for name in NAMES}

    def __getattr__(self, name: str) -> Script:
        try:
            return self._scripts[name]
        except KeyError:
            raise AttributeError(name) from None

    def run(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        return self._scripts[name](keys=keys, args=args, client=client)
