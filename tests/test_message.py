import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.errors import InvalidMessageError, InvalidTaskError
from scheduler.taskqueue.message import TaskMessage, decode, encode_new, format_timestamp, parse_timestamp

GO_ENTRY = (
    '{"task_id":42,"action":"execute","timestamp":"2025-12-20T03:03:55.123456789+09:00",'
    '"retry":0,"source":"user_create"}'
)
# Go's time.RFC3339Nano layout, as time.Parse(time.RFC3339, ...) accepts it.
GO_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def test_go_entry_decodes_every_field() -> None:
    msg = decode(GO_ENTRY)
    assert msg.task_id == 42
    assert msg.action == "execute"
    assert msg.retry == 0
    assert msg.source == "user_create"
    assert msg.timestamp == datetime(2025, 12, 20, 3, 3, 55, 123456, tzinfo=timezone(timedelta(hours=9)))


def test_encode_is_what_go_marshals() -> None:
    ts = datetime(2025, 12, 20, 3, 3, 55, 123456, tzinfo=UTC)
    encoded = TaskMessage(42, "execute", ts, 2, "periodic").encode()
    assert encoded == (
        '{"task_id":42,"action":"execute","timestamp":"2025-12-20T03:03:55.123456Z","retry":2,"source":"periodic"}'
    )
    obj = json.loads(encoded)
    assert list(obj) == ["task_id", "action", "timestamp", "retry", "source"]
    assert GO_RFC3339.match(obj["timestamp"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-12-20T03:03:55Z", datetime(2025, 12, 20, 3, 3, 55, tzinfo=UTC)),
        ("2025-12-20T03:03:55.1-07:30", datetime(2025, 12, 20, 3, 3, 55, 100000, tzinfo=timezone(-timedelta(hours=7, minutes=30)))),
        ("2025-12-20t03:03:55.999999999z", datetime(2025, 12, 20, 3, 3, 55, 999999, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_timestamps_go_writes(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@settings(max_examples=300)
@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)))
def test_our_own_stamps_parse_as_the_general_parser_reads_them(moment: datetime) -> None:
    own = format_timestamp(moment)  # the shape the quick path takes: ...SS.ffffffZ
    general = own[:-1] + "+00:00"  # the same instant, only the general parser reads it
    parsed = parse_timestamp(own)
    assert parsed == parse_timestamp(general) == moment
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2016-12-31T23:59:60.500000Z", datetime(2016, 12, 31, 23, 59, 59, 500000, tzinfo=UTC)),
        ("2025-12-20t03:03:55.123456z", datetime(2025, 12, 20, 3, 3, 55, 123456, tzinfo=UTC)),
    ],
)
def test_stamps_the_quick_path_declines_still_parse(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2025-12-20 03:03:55Z",
        "2025-12-20T03:03:55",
        "2025-13-20T03:03:55Z",
        "2025-12-20T03:03:55.1234567890Z",
        "2025-02-30T03:03:55.123456Z",  # the quick path's shape, not a date
        "2025-W51-6T03:03:55.123456Z",  # ISO week dates: datetime.fromisoformat reads them, RFC 3339 not
        "\uff12\uff10\uff12\uff15-12-20T03:03:55.123456Z",  # fullwidth digits: digits, not ASCII ones
    ],
)
def test_bad_timestamps(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text)


@pytest.mark.parametrize("source", ["user_create", "", 'quote " and \\ back', "日本語", "\u2028 line sep"])
def test_bulk_encoding_is_byte_for_byte_what_each_message_encodes(source: str) -> None:
    payloads = encode_new([1, 42, 2**63 - 1], "stop", source)
    stamps = {decode(p).timestamp for p in payloads}
    assert len(stamps) == 1  # one instant for the batch
    (ts,) = stamps
    expected = [TaskMessage(i, "stop", ts, 0, source or "unknown").encode() for i in (1, 42, 2**63 - 1)]
    assert payloads == expected
    assert [json.loads(p)["source"] for p in payloads] == [source or "unknown"] * 3


@pytest.mark.parametrize(("ids", "action"), [([1, 0, 2], "execute"), ([1, True], "execute"), ([1], "run")])
def test_bulk_encoding_checks_everything_before_encoding_anything(ids: list[int], action: str) -> None:
    with pytest.raises(InvalidTaskError):
        encode_new(ids, action)  # type: ignore[arg-type]


def test_utc_and_offset_stamps_format_the_same_instant() -> None:
    ts = datetime(2025, 12, 20, 3, 3, 55, 5, tzinfo=UTC)
    assert format_timestamp(ts) == "2025-12-20T03:03:55.000005Z"
    assert format_timestamp(ts.astimezone(timezone(timedelta(hours=9)))) == "2025-12-20T12:03:55.000005+09:00"
    assert format_timestamp(ts.replace(tzinfo=timezone(timedelta(0), "X"))) == "2025-12-20T03:03:55.000005Z"


def test_naive_datetime_written_as_utc() -> None:
    assert format_timestamp(datetime(2025, 1, 2, 3, 4, 5)) == "2025-01-02T03:04:05.000000Z"


def test_unknown_keys_ignored_and_defaults() -> None:
    msg = decode('{"task_id":7,"action":"stop","extra":{"a":[1,2]},"source":""}')
    assert (msg.task_id, msg.action, msg.retry, msg.source) == (7, "stop", 0, "unknown")


@pytest.mark.parametrize("task_id", [0, -1, 2**63, True, "42", 1.5])
def test_new_rejects_bad_task_ids(task_id: object) -> None:
    with pytest.raises(InvalidTaskError):
        TaskMessage.new(task_id, "execute")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "missing_data"),
        (b"not json", "bad_json"),
        (b"[1,2,3]", "not_object"),
        (b'{"task_id":0,"action":"execute"}', "task_id_range"),
        (b'{"task_id":-1,"action":"execute"}', "task_id_range"),
        (b'{"task_id":18446744073709551616,"action":"execute"}', "task_id_range"),
        (b'{"task_id":"42","action":"execute"}', "bad_task_id"),
        (b'{"task_id":true,"action":"execute"}', "bad_task_id"),
        (b'{"task_id":1e309,"action":"execute"}', "number_range"),
        (b'{"task_id":42.0,"action":"execute"}', "bad_task_id"),
        (b'{"task_id":NaN,"action":"execute"}', "bad_number"),
        (b'{"task_id":' + b"9" * 5000 + b',"action":"execute"}', "number_range"),
        (b"[" * 100_000 + b"]" * 100_000, "oversized"),
        (b'{"a":' + b"[" * 40 + b"]" * 40 + b"}", "too_deep"),
        (b'{"task_id":1,"action":"execute","pad":"' + b"x" * (10 << 20) + b'"}', "oversized"),
        (b'{"task_id":1,"action":"\xff"}', "bad_utf8"),
        (b'{"action":"execute"}', "missing_task_id"),
        (b'{"task_id":1}', "missing_action"),
        (b'{"task_id":1,"action":"explode"}', "bad_action"),
        (b'{"task_id":1,"action":"execute","retry":-1}', "retry_range"),
        (b'{"task_id":1,"action":"execute","timestamp":12}', "bad_timestamp"),
        (b'{"task_id":1,"action":"execute","timestamp":"yesterday"}', "bad_timestamp"),
        (b'{"task_id":1,"action":"execute","source":"\\ud800"}', "bad_source"),
        (b'{"task_id":1,"action":"execute","source":0}', "bad_source"),
        (b'{"task_id":1,"action":"execute","source":[]}', "bad_source"),
        (b"", "bad_json"),
    ],
)
def test_poison_reasons(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidMessageError) as info:
        decode(raw)
    assert info.value.reason == reason


def test_deep_nesting_within_size_limit_is_rejected_without_recursion() -> None:
    deep = b"[" * 30_000 + b"]" * 30_000
    with pytest.raises(InvalidMessageError) as info:
        decode(deep, max_bytes=1 << 20)
    assert info.value.reason == "too_deep"


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["task_id", "action", "timestamp", "retry", "source", "x"]), children, max_size=5),
    max_leaves=20,
).map(lambda obj: json.dumps(obj))))  # fmt: skip
def test_decoder_never_raises_anything_else(raw: bytes | str) -> None:
    try:
        msg = decode(raw)
    except InvalidMessageError as exc:
        assert exc.reason
    else:
        assert 1 <= msg.task_id < 2**63
        assert decode(msg.encode()) == msg.with_retry(msg.retry)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 2**63 - 1),
    st.sampled_from(["execute", "stop"]),
    st.datetimes(timezones=st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))),
    st.integers(0, 1000),
    st.text(min_size=1, max_size=30),
)
def test_roundtrip(task_id: int, action: str, ts: datetime, retry: int, source: str) -> None:
    try:
        source.encode()
    except UnicodeEncodeError:
        return
    msg = TaskMessage(task_id, action, ts, retry, source)  # type: ignore[arg-type]
    back = decode(msg.encode())
    assert (back.task_id, back.action, back.retry, back.source) == (task_id, action, retry, source)
    assert back.timestamp == ts
