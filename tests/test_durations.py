"""Go duration syntax, checked against the tables of Go's own ``time`` package tests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.config.durations import (
    HOUR,
    MICROSECOND,
    MILLISECOND,
    MINUTE,
    NANOSECOND,
    SECOND,
    format_duration,
    format_duration_ns,
    parse_duration,
    parse_duration_ns,
)

# Go src/time/time_test.go: parseDurationTests.
GO_PARSE_OK = [
    # simple
    ("0", 0),
    ("5s", 5 * SECOND),
    ("30s", 30 * SECOND),
    ("1478s", 1478 * SECOND),
    # sign
    ("-5s", -5 * SECOND),
    ("+5s", 5 * SECOND),
    ("-0", 0),
    ("+0", 0),
    # decimal
    ("5.0s", 5 * SECOND),
    ("5.6s", 5 * SECOND + 600 * MILLISECOND),
    ("5.s", 5 * SECOND),
    (".5s", 500 * MILLISECOND),
    ("1.0s", 1 * SECOND),
    ("1.00s", 1 * SECOND),
    ("1.004s", 1 * SECOND + 4 * MILLISECOND),
    ("1.0040s", 1 * SECOND + 4 * MILLISECOND),
    ("100.00100s", 100 * SECOND + 1 * MILLISECOND),
    # different units
    ("10ns", 10 * NANOSECOND),
    ("11us", 11 * MICROSECOND),
    ("12\u00b5s", 12 * MICROSECOND),
    ("12\u03bcs", 12 * MICROSECOND),
    ("13ms", 13 * MILLISECOND),
    ("14s", 14 * SECOND),
    ("15m", 15 * MINUTE),
    ("16h", 16 * HOUR),
    # composite durations
    ("3h30m", 3 * HOUR + 30 * MINUTE),
    ("10.5s4m", 4 * MINUTE + 10 * SECOND + 500 * MILLISECOND),
    ("-2m3.4s", -(2 * MINUTE + 3 * SECOND + 400 * MILLISECOND)),
    ("1h2m3s4ms5us6ns", HOUR + 2 * MINUTE + 3 * SECOND + 4 * MILLISECOND + 5 * MICROSECOND + 6),
    ("39h9m14.425s", 39 * HOUR + 9 * MINUTE + 14 * SECOND + 425 * MILLISECOND),
    # large value
    ("52763797000ns", 52763797000 * NANOSECOND),
    # more than 9 digits after decimal point, see https://golang.org/issue/6617
    ("0.3333333333333333333h", 20 * MINUTE),
    # 9007199254740993 = 1<<53+1 cannot be stored precisely in a float64
    ("9007199254740993ns", (1 << 53) + 1),
    # largest duration that can be represented by int64 in nanoseconds
    ("9223372036854775807ns", (1 << 63) - 1),
    ("9223372036854775.807us", (1 << 63) - 1),
    ("9223372036s854ms775us807ns", (1 << 63) - 1),
    ("-9223372036854775808ns", -(1 << 63)),
    ("-9223372036854775.808us", -(1 << 63)),
    ("-9223372036s854ms775us808ns", -(1 << 63)),
    # largest negative round trip value, see https://golang.org/issue/48629
    ("-2562047h47m16.854775808s", -(1 << 63)),
    # huge string; issue 15011.
    ("0.100000000000000000000h", 6 * MINUTE),
    # This value tests the first overflow check in leadingFraction.
    ("0.830103483285477580700h", 49 * MINUTE + 48 * SECOND + 372539827),
]

# Go src/time/time_test.go: parseDurationErrorTests (the invalid-UTF-8 byte cases have no str form).
GO_PARSE_ERRORS = [
    "",
    "3",
    "-",
    "s",
    ".",
    "-.",
    ".s",
    "+.s",
    "1d",
    "\ufffd",
    "\ufffd hello \ufffd world",
    # overflow
    "9223372036854775810ns",
    "9223372036854775808ns",
    "-9223372036854775809ns",
    "9223372036854776us",
    "3000000h",
    "9223372036854775.808us",
    "9223372036854ms775us808ns",
]

# Go src/time/time_test.go: durationTests (Duration.String).
GO_STRING = [
    ("0s", 0),
    ("1ns", 1 * NANOSECOND),
    ("1.1\u00b5s", 1100 * NANOSECOND),
    ("2.2ms", 2200 * MICROSECOND),
    ("3.3s", 3300 * MILLISECOND),
    ("4m5s", 4 * MINUTE + 5 * SECOND),
    ("4m5.001s", 4 * MINUTE + 5001 * MILLISECOND),
    ("5h6m7.001s", 5 * HOUR + 6 * MINUTE + 7001 * MILLISECOND),
    ("8m0.000000001s", 8 * MINUTE + 1 * NANOSECOND),
    ("2562047h47m16.854775807s", (1 << 63) - 1),
    ("-2562047h47m16.854775808s", -(1 << 63)),
]


@pytest.mark.parametrize(("text", "expected"), GO_PARSE_OK)
def test_parse_matches_go(text: str, expected: int) -> None:
    assert parse_duration_ns(text) == expected


@pytest.mark.parametrize("text", GO_PARSE_ERRORS)
def test_parse_rejects_what_go_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_ns(text)


@pytest.mark.parametrize(("expected", "ns"), GO_STRING)
def test_format_matches_go(expected: str, ns: int) -> None:
    assert format_duration_ns(ns) == expected


@pytest.mark.parametrize(("expected", "ns"), GO_STRING)
def test_go_string_form_parses_back(expected: str, ns: int) -> None:
    assert parse_duration_ns(expected) == ns


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300.0), ("90s", 90.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("300ms", 0.3), ("2us", 2e-6),
     ("2µs", 2e-6), ("10ns", 1e-8), ("0", 0.0), ("-1s", -1.0), ("168h", 604800.0)],
)  # fmt: skip
def test_parse_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(300, "5m0s"), (5400, "1h30m0s"), (0.3, "300ms"), (0, "0s"), (2e-6, "2µs"), (604800, "168h0m0s"),
     (0.2, "200ms"), (1.5, "1.5s"), (-90, "-1m30s")],
)  # fmt: skip
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5", "missing unit in duration '5'"),
        ("300", "as in '300s'"),
        ("1d", "unknown unit 'd'"),
        ("5 m", "unknown unit ' m'"),
        (" 5m", "invalid duration"),
        ("5m ", "unknown unit 'm '"),
        ("5M", "unknown unit 'M'"),
        ("abc", "invalid duration 'abc'"),
        ("3000000h", "out of range"),
    ],
)
def test_error_messages_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("value", [5, 5.0, None, b"5m", ["5m"]])
def test_non_strings_are_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_duration(value)  # type: ignore[arg-type]


@given(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1))
def test_format_then_parse_round_trips(ns: int) -> None:
    assert parse_duration_ns(format_duration_ns(ns)) == ns
