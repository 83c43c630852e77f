"""Go ``time.Duration`` text in Python: ``ParseDuration`` and ``Duration.String()``, exactly.

The Go services share ``config.json`` with us, so ``"5m"``, ``"1h30m"`` and ``".5s"`` must mean here
what they mean there. Both directions work in integer nanoseconds like Go (including its overflow
limits and its float64 step for fractions); the float-seconds helpers wrap them.
"""

from __future__ import annotations

from typing import Final

NANOSECOND: Final = 1
MICROSECOND: Final = 1_000
MILLISECOND: Final = 1_000_000
SECOND: Final = 1_000_000_000
MINUTE: Final = 60 * SECOND
HOUR: Final = 60 * MINUTE

_UNITS: Final = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "\u00b5s": MICROSECOND,  # µ MICRO SIGN, what Go prints
    "\u03bcs": MICROSECOND,  # μ GREEK SMALL LETTER MU
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}
_MAX: Final = 1 << 63  # magnitude bound of an int64 (the positive limit is one less)
_DIGITS: Final = frozenset("0123456789")


def _leading_int(s: str) -> tuple[int, str]:
    """Consume ``[0-9]*``; ValueError on int64 overflow."""
    x = 0
    i = 0
    while i < len(s) and s[i] in _DIGITS:
        if x > _MAX // 10:
            raise ValueError("overflow")
        x = x * 10 + ord(s[i]) - 48
        if x > _MAX:
            raise ValueError("overflow")
        i += 1
    return x, s[i:]


def _leading_fraction(s: str) -> tuple[int, float, str]:
    """Consume ``[0-9]*`` after the point; digits beyond int64 precision are dropped, as in Go."""
    x = 0
    scale = 1.0
    overflow = False
    i = 0
    while i < len(s) and s[i] in _DIGITS:
        if not overflow:
            y = x * 10 + ord(s[i]) - 48
            if x > (_MAX - 1) // 10 or y > _MAX:
                overflow = True
            else:
                x = y
                scale *= 10
        i += 1
    return x, scale, s[i:]


def _invalid(text: str) -> ValueError:
    return ValueError(f"invalid duration {text!r}: expected a number and a unit, such as '5m' or '1h30m'")


def _out_of_range(text: str) -> ValueError:
    return ValueError(f"duration {text!r} is out of range")


def _component(s: str, text: str) -> tuple[int, str]:
    """Consume one ``[0-9]*(\\.[0-9]*)?unit`` from ``s``: its nanoseconds and the rest."""
    if not (s[0] == "." or s[0] in _DIGITS):
        raise _invalid(text)
    before = len(s)
    try:
        whole, s = _leading_int(s)
    except ValueError:
        raise _out_of_range(text) from None
    has_whole = len(s) != before
    fraction, scale, has_fraction = 0, 1.0, False
    if s[:1] == ".":
        before = len(s) - 1
        fraction, scale, s = _leading_fraction(s[1:])
        has_fraction = len(s) != before
    if not has_whole and not has_fraction:
        raise _invalid(text)
    end = 0
    while end < len(s) and not (s[end] == "." or s[end] in _DIGITS):
        end += 1
    if end == 0:
        raise ValueError(f"missing unit in duration {text!r}: use ns, us, ms, s, m or h, as in '{text}s'")
    unit = _UNITS.get(s[:end])
    if unit is None:
        raise ValueError(f"unknown unit {s[:end]!r} in duration {text!r}: use ns, us, ms, s, m or h")
    if whole > _MAX // unit:
        raise _out_of_range(text)
    value = whole * unit
    if fraction > 0:
        # Go does this step in float64, to stay nanosecond-exact for fractions of hours.
        value += int(float(fraction) * (float(unit) / scale))
        if value > _MAX:
            raise _out_of_range(text)
    return value, s[end:]


def parse_duration_ns(text: str) -> int:
    """Go's ``time.ParseDuration``: ``[-+]?([0-9]*(\\.[0-9]*)?[a-z]+)+`` or ``0``, in nanoseconds."""
    if not isinstance(text, str):
        raise ValueError(f"a duration must be a string such as '5m' or '90s', got {text!r}")
    s = text
    negative = False
    if s[:1] in ("-", "+"):
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise _invalid(text)
    total = 0
    while s:
        value, s = _component(s, text)
        total += value
        if total > _MAX:
            raise _out_of_range(text)
    if negative:
        return -total
    if total > _MAX - 1:
        raise _out_of_range(text)
    return total


def parse_duration(text: str) -> float:
    """Go duration text to float seconds: ``"1h30m"`` → 5400.0, ``"300ms"`` → 0.3."""
    return parse_duration_ns(text) / SECOND


def _fmt_frac(value: int, precision: int) -> tuple[str, int]:
    """Split ``value`` into ``.digits`` (trailing zeros and an empty point dropped) and the integer part."""
    digits = ""
    printed = False
    for _ in range(precision):
        digit = value % 10
        printed = printed or digit != 0
        if printed:
            digits = str(digit) + digits
        value //= 10
    return ("." + digits if printed else ""), value


def format_duration_ns(ns: int) -> str:
    """Go's ``Duration.String()``: ``5m0s``, ``1h30m0s``, ``300ms``, ``1.5µs``, ``0s``."""
    u = abs(ns)
    if u < SECOND:
        if u == 0:
            return "0s"
        if u < MICROSECOND:
            precision, unit = 0, "ns"
        elif u < MILLISECOND:
            precision, unit = 3, "\u00b5s"
        else:
            precision, unit = 6, "ms"
        frac, u = _fmt_frac(u, precision)
        text = f"{u}{frac}{unit}"
    else:
        frac, u = _fmt_frac(u, 9)
        text = f"{u % 60}{frac}s"
        u //= 60
        if u > 0:
            text = f"{u % 60}m{text}"
            u //= 60
            if u > 0:
                text = f"{u}h{text}"
    return "-" + text if ns < 0 else text


def format_duration(seconds: float) -> str:
    """Float seconds to Go's ``Duration.String()`` form, rounded to the nanosecond."""
    return format_duration_ns(round(seconds * SECOND))
