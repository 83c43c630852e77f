"""The Lua scripts next to this file, registered once per client and called by SHA (EVALSHA, with a
reload on NOSCRIPT after a Redis restart, as redis-py's Script does)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script

NAMES = (
    "end",
    "lock_runs",
    "move_due",
    "publish_due",
    "set_status",
    "extend",
    "reclaim",
    "own_pending",
    "sweep_locks",
    "trim",
    "reap_consumers",
    "dlq_replay",
    "merge_items",
)
# scripts that use the shared functions of prelude.lua (lock liveness, pending checks, Redis time)
WITH_PRELUDE = frozenset(
    {"end", "lock_runs", "merge_items", "move_due", "publish_due", "set_status", "sweep_locks"}
)


@cache
def source(name: str) -> str:
    def read(file: str) -> str:
        return resources.files(__package__).joinpath("scripts", f"{file}.lua").read_text(encoding="utf-8")

    return (read("prelude") + "\n" if name in WITH_PRELUDE else "") + read(name)


class Scripts:
    """One registered Script per .lua file, bound to a client.

    Called directly, a Script reloads itself on NOSCRIPT (redis-py). Queued on a pipeline, redis-py would
    send SCRIPT EXISTS before every execute (a round-trip per batch on the hot path), so ``queue`` adds a
    plain EVALSHA instead, and ``execute`` answers NOSCRIPT (after a Redis restart or flush) by loading
    the scripts and re-issuing only the script calls that failed: every other command of the pipeline
    ran exactly once (an XREADGROUP run twice would lose the entries its first run delivered)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._scripts = {name: client.register_script(source(name)) for name in NAMES}

    def __getattr__(self, name: str) -> Script:
        try:
            return self._scripts[name]
        except KeyError:
            raise AttributeError(name) from None

    def run(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        return self._scripts[name](keys=keys, args=args, client=client)

    def queue(self, pipe: Any, name: str, keys: list[str], args: list[Any]) -> None:
        pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)

    def execute(self, build: Callable[[Any], None], raise_on_error: bool = True) -> list[Any]:
        """Build a pipeline with ``build(pipe)`` and run it once. With ``raise_on_error`` False, errors come
        back in place of their replies."""
        pipe = self.client.pipeline(transaction=False)
        build(pipe)
        commands = [args for args, _options in pipe.command_stack]
        replies = list(pipe.execute(raise_on_error=False))
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)]
        if missing:
            self.load()
            for i in missing:
                try:
                    replies[i] = self.client.execute_command(*commands[i])  # type: ignore[no-untyped-call, unused-ignore]
                except redis.ResponseError as exc:
                    replies[i] = exc
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    def load(self) -> None:
        """SCRIPT LOAD every script (a new or flushed Redis has none)."""
        for script in self._scripts.values():
            self.client.script_load(script.script)
