"""TaskMessage: the JSON object in a stream entry's ``data`` field, read and written as the Go original does.

Go writes ``{"task_id":42,"action":"execute","timestamp":"2025-12-20T03:03:55.123456789+09:00","retry":0,
"source":"user_create"}`` (json.Marshal of a struct: that key order, no spaces, RFC 3339 with up to nine
fractional digits). Decoding is strict: every rejection is an InvalidMessageError with a short reason, and
nothing untrusted can make the decoder raise anything else, recurse without bound or allocate without bound.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, Literal

from scheduler.errors import InvalidMessageError, InvalidTaskError
from scheduler.taskqueue.keys import DEFAULT_MAX_ENTRY_BYTES

Action = Literal["execute", "stop"]
ACTIONS: Final = ("execute", "stop")

TASK_ID_MAX: Final = 2**63 - 1
RETRY_MAX: Final = 1_000_000
MAX_DEPTH: Final = 32  # a valid message is depth 1; anything deeper is rejected before parsing
MAX_SOURCE_LEN: Final = 256
_MAX_INT_DIGITS: Final = 20  # 2**64 has 20 digits: longer literals are rejected unparsed

_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}", re.ASCII)
# what we (and Go, with microseconds) write for a UTC stamp: datetime's own parser takes it 6 times quicker
_OWN_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", re.ASCII)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,  # Go's parser takes ASCII digits only; \d alone also matches fullwidth ones
)


@dataclass(frozen=True, slots=True)
class TaskMessage:
    task_id: int
    action: Action
    timestamp: datetime
    retry: int = 0
    source: str = "unknown"
    # The entry id of the request a retry carries (our own key; readers that do not know it ignore it): a
    # retry keeps the time of the request it carries, not the time it was re-added.
    origin: str | None = None

    @classmethod
    def new(cls, task_id: int, action: Action, source: str = "") -> TaskMessage:
        check_task_id(task_id)
        return cls(task_id, _check_action(action), datetime.now(UTC), 0, source or "unknown")

    def with_retry(self, retry: int) -> TaskMessage:
        return replace(self, retry=retry)

    def requeued(self, entry_id: str, count_retry: bool = True) -> TaskMessage:
        """This message as re-added after entry ``entry_id`` failed: retry + 1, the first request kept."""
        return replace(self, retry=self.retry + int(count_retry), origin=self.origin or entry_id)

    def requested_at(self, entry_id: str) -> int:
        """When the request was made, on Redis' clock: its first entry's id, as a stamp."""
        return entry_stamp(self.origin or entry_id)

    def encode(self) -> str:
        return _encoded(
            self.task_id, _after_id(self.action, self.timestamp, self.retry, self.source, self.origin)
        )


def encode_new(task_ids: Iterable[int], action: Action, source: str = "") -> list[str]:
    """``[TaskMessage.new(i, action, source).encode() for i in task_ids]``, byte for byte, with one
    timestamp for the batch (they are made in the same instant) and the part after the id built once:
    a bulk submit's cost is then the XADDs, not the JSON. Every id is checked before any is encoded."""
    tail = _after_id(_check_action(action), datetime.now(UTC), 0, source or "unknown", None)
    return [_encoded(task_id, tail) for task_id in [check_task_id(task_id) for task_id in task_ids]]


# The wire format, in one place: key order and compact separators as Go's json.Marshal writes them.
def _encoded(task_id: int, after_id: str) -> str:
    return f'{{"task_id":{task_id},{after_id}'


def _after_id(action: str, timestamp: datetime, retry: int, source: str, origin: str | None) -> str:
    return (
        f'"action":"{action}","timestamp":"{format_timestamp(timestamp)}","retry":{retry},'
        f'"source":{_json_text(source)}' + (f',"origin":"{origin}"}}' if origin else "}")
    )


def _check_action(action: object) -> Action:
    if action not in ACTIONS:
        raise InvalidTaskError(f"action must be one of {ACTIONS}, got {action!r}")
    return action


_JSON_TEXTS: dict[str, str] = {}  # source -> its JSON: a daemon sees a handful of sources, over and over


def _json_text(value: str) -> str:
    cached = _JSON_TEXTS.get(value)
    if cached is None:
        cached = json.dumps(value, ensure_ascii=False)
        if len(_JSON_TEXTS) < 256:  # bounded: sources come from producers, not from us
            _JSON_TEXTS[value] = cached
    return cached


def entry_ms(entry_id: str) -> int:
    """The milliseconds part of a stream entry id: when Redis added the entry."""
    return int(entry_id.split("-", 1)[0])


def entry_stamp(entry_id: str) -> int:
    """An entry id as one ordered number, ``ms * 1000 + seq`` (seq capped at 999): the unit of every
    request time that orders stops and re-enables (Redis TIME in microseconds is on the same scale), so
    two requests in one millisecond keep their order."""
    ms, _, seq = entry_id.partition("-")
    return int(ms) * 1000 + min(int(seq or 0), 999)


def check_task_id(task_id: object) -> int:
    if isinstance(task_id, bool) or not isinstance(task_id, int):
        raise InvalidTaskError(f"task_id must be an integer, got {type(task_id).__name__}")
    if not 1 <= task_id <= TASK_ID_MAX:
        raise InvalidTaskError(f"task_id must be in 1..2^63-1, got {task_id}")
    return task_id


def format_timestamp(ts: datetime) -> str:
    """RFC 3339 that Go's time.Time parses: microseconds, zone offset or Z."""
    if ts.tzinfo is UTC:  # what every stamp of ours is (datetime.now(UTC)): no offset arithmetic
        return ts.isoformat(timespec="microseconds")[:-6] + "Z"
    offset = ts.utcoffset()
    if offset is None:
        ts = ts.replace(tzinfo=UTC)
    elif offset.seconds % 60 or offset.microseconds:
        ts = ts.astimezone(UTC)  # RFC 3339 offsets are whole minutes (historic zones had seconds)
    text = ts.isoformat(timespec="microseconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def parse_timestamp(text: str) -> datetime:
    """RFC 3339 with 0 to 9 fractional digits and any offset; nanoseconds are truncated to microseconds."""
    if _OWN_STAMP.fullmatch(text):
        try:
            return datetime.fromisoformat(text)  # tzinfo is UTC itself (datetime.UTC is timezone.utc)
        except ValueError:
            pass  # day 31 of a short month, second 60...: the general parser says what is wrong
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError("not RFC 3339")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    micros = int((m.group(7) or "0").ljust(9, "0")[:6])
    if m.group(8):
        tz: timezone = UTC
    else:
        off_h, off_m = int(m.group(10)), int(m.group(11))
        if off_h > 23 or off_m > 59:
            raise ValueError("bad zone offset")
        offset = timedelta(hours=off_h, minutes=off_m)
        tz = timezone(-offset if m.group(9) == "-" else offset)
    if second == 60:  # a leap second: Go accepts it, datetime cannot hold it
        second = 59
    return datetime(year, month, day, hour, minute, second, micros, tzinfo=tz)


def _reject_constant(name: str) -> Any:
    raise InvalidMessageError("bad_number", f"{name} is not valid JSON")


def _parse_int(literal: str) -> int:
    if len(literal.lstrip("-")) > _MAX_INT_DIGITS:
        raise InvalidMessageError("number_range", f"integer literal of {len(literal)} digits")
    return int(literal)


def _parse_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise InvalidMessageError("number_range", "number overflows a float")
    return value


def _nesting_depth(text: str) -> int:
    """Maximum bracket depth outside strings, in one linear pass (no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def _text_of(raw: bytes | str | None, max_bytes: int) -> str:
    if raw is None:
        raise InvalidMessageError("missing_data", "entry has no 'data' field")
    size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise InvalidMessageError("oversized", f"data is {size} bytes, limit {max_bytes}")
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessageError("bad_utf8", f"invalid UTF-8 at byte {exc.start}") from None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")  # a JSON escape like "\\ud800" yields a lone surrogate
    except UnicodeEncodeError:
        return False
    return True


def _int_field(obj: dict[str, Any], key: str, low: int, high: int) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMessageError(f"bad_{key}", f"{key} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidMessageError(f"{key}_range", f"{key} must be in {low}..{high}, got {value}")
    return value


# built once, not per call as json.loads(text, parse_int=...) does (1 µs of a 7 µs decode); its C scanner
# is safe to share between threads
_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_reject_constant)


def decode(raw: bytes | str | None, max_bytes: int = DEFAULT_MAX_ENTRY_BYTES) -> TaskMessage:
    """Decode a ``data`` field; raise InvalidMessageError (and only that) when it is not a valid message."""
    text = _text_of(raw, max_bytes)
    # the counts are C-speed; the exact scan runs only when enough brackets exist to matter
    if text.count("[") + text.count("{") > MAX_DEPTH and _nesting_depth(text) > MAX_DEPTH:
        raise InvalidMessageError("too_deep", f"nesting deeper than {MAX_DEPTH}")
    try:
        obj = _DECODER.decode(text)
    except InvalidMessageError:
        raise
    except (ValueError, RecursionError) as exc:
        raise InvalidMessageError("bad_json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise InvalidMessageError("not_object", f"data is a JSON {type(obj).__name__}, not an object")
    for key in ("task_id", "action"):
        if key not in obj:
            raise InvalidMessageError(f"missing_{key}", f"no {key!r} key")
    task_id = _int_field(obj, "task_id", 1, TASK_ID_MAX)
    action = obj["action"]
    if action not in ACTIONS:
        shown = action[:32] if isinstance(action, str) else type(action).__name__
        raise InvalidMessageError("bad_action", f"action must be 'execute' or 'stop', got {shown!r}")
    retry = _int_field(obj, "retry", 0, RETRY_MAX) if obj.get("retry") is not None else 0
    source = obj.get("source")
    if source is None or source == "":
        source = "unknown"  # Go writes an empty source as "unknown"
    if not isinstance(source, str) or len(source) > MAX_SOURCE_LEN or not _is_utf8(source):
        raise InvalidMessageError("bad_source", "source must be a short UTF-8 string")
    stamp = obj.get("timestamp")
    if stamp is None:
        timestamp = datetime.fromtimestamp(0, UTC)  # Go's zero time is unrepresentable; epoch marks "unset"
    elif not isinstance(stamp, str):
        raise InvalidMessageError("bad_timestamp", f"timestamp must be a string, got {type(stamp).__name__}")
    else:
        try:
            timestamp = parse_timestamp(stamp)
        except ValueError as exc:
            raise InvalidMessageError("bad_timestamp", f"{exc}: {stamp[:40]!r}") from None
    return TaskMessage(task_id, action, timestamp, retry, source, _origin(obj.get("origin")))


def _origin(value: object) -> str | None:
    """A foreign or damaged origin is dropped: it only costs a retry its place in stop ordering."""
    return value if isinstance(value, str) and _ENTRY_ID.fullmatch(value) else None
