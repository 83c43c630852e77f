"""The per-request script read from a FetchRequest keyword, e.g. ``fail=UNKNOWN*2;delay=50``.

Segments are separated by ``;``. ``fail=CODE``, ``fail=CODE*N``, ``delay=MS``, ``hang``, ``items=N`` and
``no_items`` are directives; any other segment is search text, so a plain keyword is a normal search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import grpc

_FAIL = re.compile(r"^fail=([A-Z_]+)(?:\*(\d+))?$")
_NUMBER = re.compile(r"^(delay|items)=(\d+)$")


class ScriptError(ValueError):
    """A segment names a directive but its value is unusable (the stub answers INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class Script:
    text: str = ""
    fail: grpc.StatusCode | None = None
    fail_times: int | None = None  # None: fail on every call; N: only the first N calls of the task
    delay_ms: int | None = None  # None: the server's base delay
    hang: bool = False
    items: int | None = None  # None: the server's default
    no_items: bool = False

    def fails_on(self, call_number: int) -> bool:
        """Whether the ``call_number``-th call (1-based) for this task must fail."""
        if self.fail is None:
            return False
        return self.fail_times is None or call_number <= self.fail_times


def _status_code(name: str) -> grpc.StatusCode:
    code = grpc.StatusCode.__members__.get(name)
    if code is None or code is grpc.StatusCode.OK:
        raise ScriptError(f"fail={name}: not a gRPC error status name")
    return code


def parse(keyword: str) -> Script:
    script = Script()
    text: list[str] = []
    for raw in keyword.split(";"):
        segment = raw.strip()
        if segment == "hang":
            script = replace(script, hang=True)
        elif segment == "no_items":
            script = replace(script, no_items=True)
        elif match := _FAIL.match(segment):
            times = int(match[2]) if match[2] is not None else None
            script = replace(script, fail=_status_code(match[1]), fail_times=times)
        elif match := _NUMBER.match(segment):
            if match[1] == "delay":
                script = replace(script, delay_ms=int(match[2]))
            else:
                script = replace(script, items=int(match[2]))
        elif segment.startswith(("fail=", "delay=", "items=")):
            raise ScriptError(f"bad directive {segment!r}")
        elif segment:
            text.append(segment)
    return replace(script, text=" ".join(text))
