"""The fuzz run's stream entries: poison of every kind a broken producer could write, and valid executes.

``bad_entry`` mutates a valid message (wrong types, huge numbers, odd number literals, invalid UTF-8,
lone surrogates, deep nesting, duplicate keys, oversized, bad actions) or writes random bytes, random
JSON, an entry without a ``data`` field or one over ``MAX_ENTRY_BYTES``. ``good_entry`` is a valid
``execute``, sometimes with extra keys and stream fields that readers ignore. ``is_poison`` is the
oracle's test, the daemon's own decoder: a mutation that still decodes is not sent.
"""

from __future__ import annotations

import json
import random
from typing import Any, Final

from scheduler.errors import InvalidMessageError
from scheduler.taskqueue import TaskMessage, decode

MAX_ENTRY_BYTES: Final = 8192  # the daemon's app.max_entry_bytes: oversized entries stay cheap to write

Fields = dict[bytes, bytes]

_BIG: Final = [2**63, 2**63 - 1, 2**64, -(2**63), 10**30, -1, 0, 1_000_001, 10**400]
_NUMBER_TEXTS: Final = [b"1e400", b"-1e400", b"NaN", b"Infinity", b"-0", b"1.0", b"7" * 25, b"9" * 5000]
_BAD_UTF8: Final = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82", b"\x80"]


def random_json(rng: random.Random, depth: int = 0) -> object:
    """A random JSON value: scalars of every type, huge numbers, lists and objects a few levels deep."""
    kind = rng.randrange(9 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(_BIG)
    if kind == 3:
        return rng.randint(-(2**70), 2**70)
    if kind == 4:
        return rng.choice([rng.uniform(-1e300, 1e300), float("inf"), 1e-300, 0.5])
    if kind in (5, 6):
        return "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x2FFF)]))
            for _ in range(rng.randrange(12))
        )
    if kind == 7:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{rng.randrange(100)}": random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def _dumps(value: object, rng: random.Random) -> bytes:
    return json.dumps(value, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def _byte_mutation(rng: random.Random, base: bytes) -> bytes:
    data = bytearray(base)
    kind = rng.randrange(3)
    if kind == 0:  # flip bytes
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    at = rng.randrange(len(data))
    if kind == 1:  # insert random bytes
        return bytes(data[:at]) + rng.randbytes(rng.randint(1, 16)) + bytes(data[at:])
    return bytes(data[:at]) + bytes(data[rng.randint(at + 1, len(data)) :])  # delete a slice or truncate


def mutate(rng: random.Random, base: bytes) -> bytes:
    """A valid message's bytes changed the way a broken producer, a bug or a bit flip would."""
    kind = rng.randrange(10)
    if kind == 0:
        return _byte_mutation(rng, base)
    obj: dict[str, Any] = json.loads(base)
    key: str = rng.choice([*obj, "extra"])
    if kind == 1:  # a wrong-typed, huge, nested value
        obj[key] = random_json(rng)
        return _dumps(obj, rng)
    if kind == 2:  # a key missing
        obj.pop(key, None)
        return _dumps(obj, rng)
    if kind == 3:  # a number literal json reads but the decoder must refuse
        name = rng.choice(["task_id", "retry"])
        return base.replace(
            f'"{name}":{obj[name]}'.encode(), f'"{name}":'.encode() + rng.choice(_NUMBER_TEXTS)
        )
    if kind == 4:  # invalid UTF-8 inside a string
        at = base.index(b'"source":"') + len(b'"source":"')
        return base[:at] + rng.choice(_BAD_UTF8) + base[at:]
    if kind == 5:  # a lone surrogate through a JSON escape
        obj[rng.choice(["source", "action", "timestamp"])] = "\ud800x"
        return json.dumps(obj).encode()
    if kind == 6:  # deep nesting, around the object or as a value
        depth = rng.choice([rng.randint(2, 64), rng.randint(64, 4000)])
        if rng.random() < 0.5:
            return b"[" * depth + base + b"]" * depth
        return base[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 7:  # a duplicate key (json keeps the last)
        return base[:-1] + b',"' + key.encode() + b'":' + _dumps(random_json(rng), rng) + b"}"
    if kind == 8:  # oversized, or just under the limit with a broken tail
        size = rng.randint(MAX_ENTRY_BYTES - 32, 3 * MAX_ENTRY_BYTES)
        return base[:-1] + b',"pad":"' + b"p" * max(0, size - len(base)) + b'"'
    obj["action"] = rng.choice(["launch", "EXECUTE", "", "stop ", None, 1, ["execute"]])
    return _dumps(obj, rng)


def bad_entry(rng: random.Random, base: bytes) -> Fields:
    """The fields of one poison XADD (may, rarely, still decode: the caller checks)."""
    kind = rng.randrange(10)
    if kind < 6:
        data = mutate(rng, base)
    elif kind == 6:
        data = rng.randbytes(rng.randrange(1, 400))
    elif kind == 7:
        data = _dumps(random_json(rng), rng)
    elif kind == 8:  # no data field
        names = [b"Data", b"data ", b"payload", b"", b"d\xffata", b"DATA"]
        return {rng.choice(names): rng.randbytes(rng.randrange(60)) for _ in range(rng.randint(1, 3))}
    else:
        data = base[:-1] + b',"x":"' + b"y" * rng.randint(MAX_ENTRY_BYTES, 8 * MAX_ENTRY_BYTES) + b'"}'
    fields = {b"data": data}
    if rng.random() < 0.2:
        fields[rng.choice([b"x", b"trace", b"dat"])] = rng.randbytes(rng.randrange(20))
    return fields


def good_entry(rng: random.Random, task_id: int) -> Fields:
    """A valid execute for ``task_id``, sometimes with keys and stream fields that readers ignore."""
    source = rng.choice(["user_create", "periodic", "", "unknown", "fuzz-é"])
    data = TaskMessage.new(task_id, "execute", source).encode().encode()
    if rng.random() < 0.2:
        extended = data[:-1] + b',"extra":' + _dumps(random_json(rng), rng) + b"}"
        if not is_poison({b"data": extended}):  # the extra value may be Infinity, 10**400…
            data = extended
    fields = {b"data": data}
    if rng.random() < 0.1:
        fields[b"trace"] = b"fuzz"
    return fields


def is_poison(fields: Fields) -> bool:
    """Does the daemon's decoder refuse these fields (so the daemon must dead-letter the entry)?"""
    try:
        decode(fields.get(b"data"), MAX_ENTRY_BYTES)
    except InvalidMessageError:
        return True
    return False
