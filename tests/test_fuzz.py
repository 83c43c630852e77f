"""Property tests (hypothesis) of what untrusted input can reach: stream entries, ``decode``, configuration.

Everything runs against the private real Redis of the fixtures, never a mock. Each hypothesis example
starts from an empty database (FLUSHALL) and a cleared log capture, since the fixtures are per test.
The long mode, a real daemon fed random entries for minutes, is ``python -m scheduler.chaos.fuzz``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from scheduler.config.load import GO_ONLY_APP_KEYS, load_settings
from scheduler.config.settings import SPECS, Settings
from scheduler.errors import ConfigError, InvalidMessageError, SchedulerError
from scheduler.taskqueue import Consumer, StreamMessage, TaskMessage, decode
from scheduler.taskqueue.message import ACTIONS, MAX_SOURCE_LEN, RETRY_MAX, TASK_ID_MAX

S, G = "fuzz:task:queue", "fuzz_group"
DLQ = f"{S}:dlq"
LIMIT = 2048  # the consumers' max_entry_bytes here: oversized entries stay cheap to make
SHOWN_MAX = 200  # no log record may hold more than this much of a payload


def with_fixtures(max_examples: int) -> settings:
    """Settings for a test that also takes function-scoped fixtures (each example cleans up itself)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# -- strategies: messages and how they go wrong --------------------------------------------------------

ZONES = [
    UTC,
    timezone(timedelta(hours=9)),
    timezone(-timedelta(hours=7, minutes=30)),
    timezone(timedelta(hours=5, minutes=45)),
]
timestamps = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30), timezones=st.sampled_from(ZONES)
)
sources = st.sampled_from(["user_create", "periodic", "system", "unknown"]) | st.text(
    min_size=1, max_size=MAX_SOURCE_LEN
)
task_ids = st.integers(1, TASK_ID_MAX) | st.sampled_from([1, TASK_ID_MAX])
messages = st.builds(
    TaskMessage,
    task_id=task_ids,
    action=st.sampled_from(ACTIONS),
    timestamp=timestamps,
    retry=st.integers(0, RETRY_MAX),
    source=sources,
)

if "origin" in {f.name for f in dataclasses.fields(TaskMessage)}:  # a retry's first entry id, when present
    entry_ids = st.builds(lambda ms, seq: f"{ms}-{seq}", st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
    messages = st.builds(
        lambda m, origin: dataclasses.replace(m, origin=origin), messages, st.none() | entry_ids
    )

BIG_NUMBERS = [2**63, 2**63 - 1, 2**64, -(2**63), 10**30, -1, 0, RETRY_MAX + 1]
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from(BIG_NUMBERS)
    | st.floats()
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# literal number texts Python's json would parse into something the decoder must refuse (or bound)
NUMBER_TEXTS = [b"1e400", b"-1e400", b"NaN", b"Infinity", b"-0", b"1.0", b"7" * 25, b"9" * 5000, b"0x10"]
BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82", b"\x80"]


def _json_bytes(value: object, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` (a valid message) changed in one of the ways a broken producer or a bit flip would."""
    kind = draw(st.integers(0, 11))
    return _byte_mutation(draw, base, kind) if kind < 3 else _json_mutation(draw, base, kind)


def _byte_mutation(draw: st.DrawFn, base: bytes, kind: int) -> bytes:
    n = len(base)
    if kind == 0:  # flip bytes
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, n - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == 1:  # insert random bytes
        at = draw(st.integers(0, n))
        return base[:at] + draw(st.binary(min_size=1, max_size=16)) + base[at:]
    if kind == 2:  # delete a slice, or truncate
        start = draw(st.integers(0, n - 1))
        return base[:start] + base[draw(st.integers(start + 1, n)) :]
    raise AssertionError(kind)


def _json_mutation(draw: st.DrawFn, base: bytes, kind: int) -> bytes:
    n = len(base)
    obj = json.loads(base)
    key = draw(st.sampled_from([*obj, "extra"]))
    if kind == 3:  # a wrong-typed value, or a huge / nested / out-of-range one
        obj[key] = draw(json_values)
        return _json_bytes(obj, draw(st.booleans()))
    if kind == 4:  # a key missing
        obj.pop(key, None)
        return _json_bytes(obj, True)
    if kind == 5:  # extra keys, nested as deep as the strategy goes (valid unless the rest is bad)
        obj.update(draw(st.dictionaries(st.text(max_size=8), json_values, min_size=1, max_size=3)))
        return _json_bytes(obj, draw(st.booleans()))
    if kind == 6:  # a number literal json.loads reads but the decoder must refuse
        field = draw(st.sampled_from(["task_id", "retry"]))
        text = base.replace(
            f'"{field}":{obj[field]}'.encode(), f'"{field}":'.encode() + draw(st.sampled_from(NUMBER_TEXTS))
        )
        return text
    if kind == 7:  # invalid UTF-8 inside a string
        at = base.index(b'"source":"') + len(b'"source":"')
        return base[:at] + draw(st.sampled_from(BAD_UTF8)) + base[at:]
    if kind == 8:  # a lone surrogate through a JSON escape (valid UTF-8 bytes, invalid text)
        obj[draw(st.sampled_from(["source", "action", "timestamp"]))] = "\ud800x"
        return _json_bytes(obj, True)
    if kind == 9:  # nesting: around the object, or as a value
        depth = draw(st.integers(2, 300))
        if draw(st.booleans()):
            return b"[" * depth + base + b"]" * depth
        return base[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 10:  # a duplicate key after the good one (json keeps the last)
        return base[:-1] + b',"' + key.encode() + b'":' + _json_bytes(draw(json_values), True) + b"}"
    # near the size limit: padding in an extra key
    size = draw(st.integers(LIMIT - 64, LIMIT + 64))
    pad = max(0, size - n - len(',"pad":""'))
    return base[:-1] + b',"pad":"' + b"p" * pad + b'"}'


@st.composite
def stream_entries(draw: st.DrawFn) -> dict[bytes, bytes]:
    """The fields of one XADD: a valid message, a mutated one, or something else entirely."""
    kind = draw(
        st.sampled_from(
            ["valid", "valid", "mutated", "mutated", "mutated", "random", "json", "no_data", "oversized"]
        )
    )
    base = draw(messages).encode().encode("utf-8")
    if kind == "valid":
        data = base
    elif kind == "mutated":
        data = draw(mutated(base))
    elif kind == "random":
        data = draw(st.binary(max_size=300))
    elif kind == "json":
        data = _json_bytes(draw(json_values), draw(st.booleans()))
    elif kind == "oversized":
        data = base[:-1] + b',"x":"' + b"y" * draw(st.integers(LIMIT, 4 * LIMIT)) + b'"}'
    else:
        names = st.sampled_from([b"Data", b"data ", b"payload", b"", b"d\xffata", b"DATA"])
        return draw(st.dictionaries(names, st.binary(max_size=50), min_size=1, max_size=3))
    fields = {b"data": data}
    if draw(st.integers(0, 4)) == 0:  # extra stream fields beside data: ignored by readers
        fields.update(
            draw(
                st.dictionaries(st.sampled_from([b"x", b"trace", b"dat"]), st.binary(max_size=20), max_size=2)
            )
        )
    return fields


def _expected(fields: dict[bytes, bytes]) -> TaskMessage | None:
    """The message the consumer must return for these fields, or None: it must dead-letter them."""
    try:
        return decode(fields.get(b"data"), LIMIT)
    except InvalidMessageError:
        return None


# -- helpers --------------------------------------------------------------------------------------------


def _log_texts(records: Iterable[logging.LogRecord]) -> str:
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.append(repr(record.__dict__))
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(repr(record.exc_info[1]))
    return "\n".join(parts)


def _assert_no_payload_logged(log_text: str, payloads: Iterable[bytes]) -> None:
    for data in payloads:
        if len(data) <= SHOWN_MAX:
            continue
        shown = data.decode("utf-8", "replace")
        for form in (shown, repr(data)[2:-1], repr(shown)[1:-1]):
            head = form[: SHOWN_MAX + 1]
            assert head not in log_text, f"a log record holds the first {len(head)} characters of a payload"


def _dead_letters(client: redis.Redis) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in client.xrange(DLQ)]


def _last_delivered(client: redis.Redis) -> bytes:
    [group] = [g for g in client.xinfo_groups(S) if g["name"] in (G, G.encode())]
    value = group["last-delivered-id"]
    return value if isinstance(value, bytes) else str(value).encode()


def _drain(client: redis.Redis, c: Consumer, count: int, last_id: bytes) -> list[StreamMessage]:
    """``read`` until every entry was delivered and a read came back empty."""
    got: list[StreamMessage] = []
    for _ in range(10_000):
        try:
            batch = c.read(count, block_ms=None)
        except SchedulerError as exc:  # documented, but nothing excuses it against a healthy Redis
            pytest.fail(f"read raised {exc!r}")
        got += batch
        if not batch and not c.resuming and _last_delivered(client) == last_id:
            return got
    pytest.fail("read never drained the stream")


def _consumer(client: redis.Redis, name: str = "fuzz-1", **kwargs: Any) -> Consumer:
    c = Consumer(client, None, S, G, name, max_entry_bytes=LIMIT, **kwargs)
    c.ensure_group()
    return c


# -- (a) stream entries through Consumer.read ---------------------------------------------------------


@with_fixtures(100)
@given(
    entries=st.lists(stream_entries(), min_size=1, max_size=25),
    count=st.integers(1, 12),
    path=st.sampled_from(["read", "read", "resume", "reclaim"]),
)
def test_random_entries_good_returned_bad_dead_lettered_once(
    any_r: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    entries: list[dict[bytes, bytes]],
    count: int,
    path: str,
) -> None:
    any_r.flushall()
    caplog.clear()
    c = _consumer(any_r, max_deliveries=5)
    ids = [any_r.xadd(S, fields) for fields in entries]  # type: ignore[arg-type]
    expected = {i.decode(): _expected(f) for i, f in zip(ids, entries, strict=True)}
    good = [i for i, m in expected.items() if m is not None]
    bad = [i for i, m in expected.items() if m is None]
    event(f"{path}: {'good and bad' if good and bad else 'only good' if good else 'only bad'}")

    with caplog.at_level(logging.DEBUG, logger="scheduler"):
        if path == "read":  # new entries
            got = _drain(any_r, c, count, ids[-1])
        elif path == "resume":  # delivered to this consumer's name before a crash: re-read from id 0
            any_r.xreadgroup(G, "fuzz-1", {S: ">"}, count=len(ids))
            got = _drain(any_r, _consumer(any_r, max_deliveries=5), count, ids[-1])
        else:  # delivered to a consumer that died: reclaimed by another
            any_r.xreadgroup(G, "dead", {S: ">"}, count=len(ids))
            got = []
            for _ in range(1000):
                got += c.reclaim(min_idle_ms=0, count=count)
                if not any_r.xpending_range(S, G, "-", "+", 1, consumername="dead"):
                    break
    # every good entry returned, once, as it was written; nothing else
    assert [m.id for m in got] == good
    for m in got:
        assert m.message == expected[m.id]
    # every bad entry dead-lettered exactly once, with a reason, and acknowledged
    letters = _dead_letters(any_r)
    assert Counter(f[b"original_id"].decode() for f in letters) == Counter(bad)
    for letter in letters:
        assert letter[b"reason"] and letter[b"failed_at"].endswith(b"Z")
        assert len(letter[b"payload"]) <= LIMIT
    pending = any_r.xpending_range(S, G, "-", "+", len(ids) + 1)
    assert sorted(p["message_id"].decode() for p in pending) == sorted(good)
    assert c.ack(*good) == len(good)
    assert c.pending_summary().count == 0
    # a second reader finds nothing left to dead-letter
    assert _consumer(any_r, "fuzz-2").read(50, block_ms=None) == []
    assert len(_dead_letters(any_r)) == len(bad)
    _assert_no_payload_logged(_log_texts(caplog.records), [f.get(b"data", b"") for f in entries])


@with_fixtures(50)
@given(batches=st.lists(st.lists(stream_entries(), min_size=1, max_size=8), min_size=2, max_size=5))
def test_entries_added_between_reads(r: redis.Redis, batches: list[list[dict[bytes, bytes]]]) -> None:
    """Writers and the reader interleaved: the outcome is the same as for one batch."""
    r.flushall()
    c = _consumer(r)
    good: list[str] = []
    bad: list[str] = []
    got: list[StreamMessage] = []
    for batch in batches:
        for fields in batch:
            entry_id = r.xadd(S, fields).decode()  # type: ignore[arg-type]
            (good if _expected(fields) else bad).append(entry_id)
        got += _drain(r, c, 3, entry_id.encode())
    assert [m.id for m in got] == good
    assert Counter(f[b"original_id"].decode() for f in _dead_letters(r)) == Counter(bad)
    c.ack(*good)
    assert c.pending_summary().count == 0


def test_oversized_entry_at_the_default_limit_is_dead_lettered_without_logging_it(
    r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    c = Consumer(r, None, S, G, "big")
    base = TaskMessage.new(5, "execute").encode()
    data = base[:-1] + ',"x":"' + "z" * (64 * 1024) + '"}'
    entry_id = r.xadd(S, {"data": data}).decode()
    with caplog.at_level(logging.DEBUG, logger="scheduler"):
        assert c.read(10, block_ms=None) == []
    [letter] = _dead_letters(r)
    assert letter[b"original_id"].decode() == entry_id
    assert letter[b"reason"].startswith(b"oversized")
    assert c.pending_summary().count == 0
    _assert_no_payload_logged(_log_texts(caplog.records), [data.encode()])


# -- (b) decode ---------------------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(raw=st.binary(max_size=400) | st.text(max_size=200) | st.none())
def test_decode_arbitrary_input_raises_only_invalid_message(raw: bytes | str | None) -> None:
    try:
        msg = decode(raw, LIMIT)
    except InvalidMessageError as exc:
        assert exc.reason and " " not in exc.reason
        return
    assert 1 <= msg.task_id <= TASK_ID_MAX and msg.action in ACTIONS


@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_decode_mutated_and_random_json_raises_only_invalid_message(data: st.DataObject) -> None:
    base = data.draw(messages).encode().encode("utf-8")
    raw = data.draw(mutated(base) | json_values.map(lambda v: _json_bytes(v, False)))
    try:
        msg = decode(raw, LIMIT)
    except InvalidMessageError as exc:
        assert len(str(exc)) <= 600  # a bounded reason: never the whole input
        return
    assert msg.encode()  # whatever decodes also encodes


@settings(max_examples=500, deadline=None)
@given(msg=messages)
def test_encode_decode_round_trip(msg: TaskMessage) -> None:
    text = msg.encode()
    assert decode(text) == msg
    assert decode(text.encode("utf-8")) == msg
    assert decode(text).encode() == text


@settings(max_examples=200, deadline=None)
@given(msg=messages, nanos=st.integers(0, 999), digits=st.integers(7, 9))
def test_go_nanosecond_timestamps_read_exactly(msg: TaskMessage, nanos: int, digits: int) -> None:
    """Go writes up to nine fractional digits: read to the microsecond, never an error."""
    stamp = msg.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%f") + f"{nanos:03d}"[: digits - 6]
    offset = msg.timestamp.strftime("%z")
    stamp += "Z" if offset == "+0000" else f"{offset[:3]}:{offset[3:]}"
    go = msg.encode().replace(json.loads(msg.encode())["timestamp"], stamp)
    assert decode(go) == msg


# -- (c) configuration --------------------------------------------------------------------------------

SECTIONS = ["app", "redis", "mysql", "email", "http", "crawler"]
KNOWN = {
    section: [s.key.split(".", 1)[1] for s in SPECS if s.section == section]
    for section in ("app", "redis", "mysql", "email")
}
# values a setting's reader could plausibly accept, so random documents also produce Settings
PLAUSIBLE = [
    "5m", "90s", "1h30m", "0", "-5s", ".5s", "1.5h", "100ms", "9999999999999h", "true", "false", "yes",
    "1", "0", "8", "1024", "65535", "json", "text", "warn", "debug", "localhost:6379", "[::1]:6380",
    "host:0", "dns:///crawler:50051", "redis://127.0.0.1:6379/0", "rediss://h:1", "unix:///run/r.sock",
    "redis://", "redis://h:99999", "gh:tasks", "has space", "", "\u00b5s", "5\u00b5s",
]  # fmt: skip
config_values = (
    json_values
    | st.sampled_from(PLAUSIBLE)
    | st.integers(-(2**64), 2**64)
    | st.sampled_from([True, False, None, 0, 1, 3, 50, 2**63, 10**400, 1e308, -1])
)
secrets = st.text(
    alphabet="abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789-_.~", min_size=10, max_size=24
).map(lambda s: "Pw" + s)


@st.composite
def config_documents(draw: st.DrawFn) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(SECTIONS), unique=True, max_size=4)):
        if section not in KNOWN or draw(st.integers(0, 9)) == 0:
            document[section] = draw(config_values)  # an ignored section, or a section of the wrong type
            continue
        names = st.sampled_from(KNOWN[section]) | st.text(min_size=1, max_size=12)
        if section == "app":
            names |= st.sampled_from(sorted(GO_ONLY_APP_KEYS))
        document[section] = draw(st.dictionaries(names, config_values, max_size=6))
    return document


env_values = st.sampled_from(PLAUSIBLE) | st.text(max_size=30) | st.integers(-(2**70), 2**70).map(str)
environments = st.dictionaries(
    st.sampled_from([s.env for s in SPECS] + ["APP_UNKNOWN", "REDIS_HOST"]), env_values, max_size=5
)


def _offending_names(document: dict[str, Any], env: dict[str, str]) -> list[str]:
    """What an error's message may name: keys and sections of the file, variables of the environment."""
    names = [name for name, value in env.items() if value]
    names += [name.lower().replace("_", ".", 1) for name in names]
    for section, body in document.items():
        if isinstance(body, dict):
            names += [f"{section}.{key}" for key in body]
        elif section in KNOWN and body is not None:
            names.append(f'"{section}"')
    return names


def _load(tmp_path: Path, document: dict[str, Any], env: dict[str, str]) -> Settings | ConfigError:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    try:
        return load_settings(str(path), env=env)
    except ConfigError as exc:
        return exc


@with_fixtures(250)
@given(
    document=config_documents(),
    env=environments,
    secret=secrets,
    where=st.sampled_from(["file", "env", "url", "none"]),
    url=st.sampled_from(
        ["redis://127.0.0.1:6379/0", "rediss://h:1", "redis://h:0", "redis://", "redis://h:1/x"]
    ),
)
def test_random_config_settings_or_config_error_naming_the_key_never_the_secret(
    tmp_path: Path, document: dict[str, Any], env: dict[str, str], secret: str, where: str, url: str
) -> None:
    if where == "file":
        redis_section = document.get("redis")
        document["redis"] = {**(redis_section if isinstance(redis_section, dict) else {}), "password": secret}
    elif where == "env":
        env = {**env, "REDIS_PASSWORD": secret}
    elif where == "url":  # the password inside the URL: the same secret
        scheme, rest = url.split("://", 1)
        env = {**env, "REDIS_URL": f"{scheme}://:{secret}@{rest}"}
    outcome = _load(tmp_path, document, env)  # anything but ConfigError propagates and fails the test
    if isinstance(outcome, ConfigError):
        message = str(outcome)
        assert message
        named = _offending_names(document, env)
        assert any(name in message or repr(name) in message for name in named), (
            f"{message!r} names none of {named}"
        )
        assert secret not in message
    else:
        assert isinstance(outcome, Settings)
        assert secret not in repr(outcome)
        assert secret not in json.dumps(outcome.masked(), ensure_ascii=False)
        assert secret not in outcome.redis_target()
        if where == "env" or (where == "file" and not env.get("REDIS_PASSWORD")):
            assert outcome.redis_password == secret


@with_fixtures(200)
@given(env=st.dictionaries(st.sampled_from([s.env for s in SPECS]), env_values, min_size=1, max_size=6))
def test_random_environment_settings_or_config_error_naming_the_variable(
    tmp_path: Path, env: dict[str, str]
) -> None:
    outcome = _load(tmp_path, {}, env)
    if isinstance(outcome, ConfigError):
        named = [name for name, value in env.items() if value]
        assert any(name in str(outcome) for name in named), f"{outcome} names none of {named}"


@settings(max_examples=40, deadline=None)
@given(document=json_values.filter(lambda v: not isinstance(v, dict)))
def test_a_config_file_that_is_no_object_is_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, document: object
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ConfigError, match="config file"):
        load_settings(str(path), env={})


def test_password_in_a_url_with_nfkc_special_characters_stays_out_of_the_error() -> None:
    secret = "hunter\uff03two"  # FULLWIDTH NUMBER SIGN: NFKC turns it into '#'
    with pytest.raises(ConfigError) as raised:
        load_settings(env={"REDIS_URL": f"redis://:{secret}@127.0.0.1:6379/0"})
    assert "hunter" not in str(raised.value)


def test_an_unknown_key_with_a_newline_still_gives_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"redis": {"db\nERROR forged line": 1}}), encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_settings(str(path), env={})
    assert "\n" not in str(raised.value)


# -- the long mode, briefly ---------------------------------------------------------------------------


def test_fuzz_generators_make_poison_and_the_log_check_finds_a_payload() -> None:
    import random

    from scheduler.chaos.fuzz_checks import log_blob_text, payloads_in_log
    from scheduler.chaos.fuzz_entries import bad_entry, good_entry, is_poison

    rng = random.Random(3)
    base = TaskMessage.new(9, "execute", "user_create").encode().encode()
    entries = [bad_entry(rng, base) for _ in range(300)]
    assert sum(is_poison(f) for f in entries) >= 270  # the rare valid mutation is never sent
    assert not any(is_poison(good_entry(rng, t)) for t in range(1, 200))
    payload = b'{"task_id":1,"action":"' + "é".encode() * 300 + b'"}'
    line = json.dumps({"msg": "x", "data": payload.decode()})  # JSON logs escape non-ASCII
    assert payloads_in_log(log_blob_text(line), [payload]) == 1
    assert payloads_in_log(log_blob_text(line[:150]), [payload]) == 0


@pytest.mark.slow
@pytest.mark.e2e
def test_fuzz_daemon_quick_run() -> None:
    from scheduler.chaos.fuzz import run_fuzz

    result = run_fuzz(minutes=0.25, seed=int(os.environ.get("FUZZ_SEED", "7")))
    assert result["ok"], result
