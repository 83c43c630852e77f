"""Kinds of value: how a setting is read from JSON or text, what is allowed, and how it is shown."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

import redis

from scheduler.config.addresses import parse_go_dsn, split_host_port
from scheduler.config.durations import format_duration, parse_duration
from scheduler.config.redaction import MASK, redact


def compact_duration(seconds: float) -> str:
    """Go's ``Duration.String()`` without zero tails, as people write it: ``5m``, ``168h``, ``1h30m``."""
    text = format_duration(seconds)
    if text.endswith("m0s"):
        text = text[:-2]
    if text.endswith("h0m"):
        text = text[:-2]
    return text


class Kind:
    """Reads one setting. ``native`` says the value comes from Python (defaults, overrides), not text."""

    describe = ""
    optional = False  # None and "" mean "not set"

    def read(self, raw: object, *, native: bool) -> object:
        if self.optional and (raw is None or raw == ""):
            return None
        return self.convert(raw, native)

    def convert(self, raw: object, native: bool) -> object:
        raise NotImplementedError

    def show(self, value: object) -> object:
        """The value as shown in ``masked()``, ``repr`` and the docs: JSON-friendly and safe to log."""
        return value


class Boolean(Kind):
    describe = "`true`/`false` (also `1`/`0`, `yes`/`no`)"
    _WORDS: Final = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

    def convert(self, raw: object, native: bool) -> object:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str) and raw.strip().lower() in self._WORDS:
            return self._WORDS[raw.strip().lower()]
        raise ValueError(f"must be true or false (or 1/0, yes/no), got {raw!r}")


class Integer(Kind):
    def __init__(self, low: int, high: int | None = None) -> None:
        self.low, self.high = low, high
        self.describe = f"{low} … {high}" if high is not None else f"≥ {low}"

    def convert(self, raw: object, native: bool) -> object:
        value: int | None = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and re.fullmatch(r"\s*[-+]?[0-9]+\s*", raw):
            value = int(raw)
        if value is None or value < self.low or (self.high is not None and value > self.high):
            bounds = f"from {self.low} to {self.high}" if self.high is not None else f"≥ {self.low}"
            raise ValueError(f"must be an integer {bounds}, got {raw!r}")
        return value


class Duration(Kind):
    """Go duration text (``"5m"``); float seconds when the value comes from Python."""

    def __init__(self, *, above: float | None = None, at_least: float | None = None) -> None:
        self.above, self.at_least = above, at_least
        low = above if above is not None else at_least or 0.0
        self.bound = f"{'>' if above is not None else '≥'} {compact_duration(low) if low else '0'}"
        self.describe = f"duration {self.bound}"

    def convert(self, raw: object, native: bool) -> object:
        if native and isinstance(raw, int | float) and not isinstance(raw, bool):
            seconds = float(raw)
        elif isinstance(raw, str):
            seconds = parse_duration(raw)
        else:
            raise ValueError(f'must be a Go duration string such as "5m" or "90s", got {raw!r}')
        too_small = (self.above is not None and not seconds > self.above) or (
            self.at_least is not None and not seconds >= self.at_least
        )
        if too_small or seconds != seconds or seconds == float("inf"):
            raise ValueError(f"must be a duration {self.bound}, got {raw!r}")
        return seconds

    def show(self, value: object) -> object:
        return compact_duration(value) if isinstance(value, float) else value


class Choice(Kind):
    def __init__(self, *choices: str, aliases: Mapping[str, str] | None = None) -> None:
        self.choices, self.aliases = choices, dict(aliases or {})
        self.describe = " / ".join(f"`{c}`" for c in choices)

    def convert(self, raw: object, native: bool) -> object:
        if isinstance(raw, str):
            word = self.aliases.get(raw.strip().lower(), raw.strip().lower())
            if word in self.choices:
                return word
        raise ValueError(f"must be one of {', '.join(self.choices)}, got {raw!r}")


class Name(Kind):
    describe = "text, no spaces"

    def convert(self, raw: object, native: bool) -> object:
        if not isinstance(raw, str) or not raw or re.search(r"\s", raw):
            raise ValueError(f"must be non-empty text without spaces, got {raw!r}")
        return raw


class ConsumerName(Name):
    def read(self, raw: object, *, native: bool) -> object:
        if raw is None or raw == "":
            raw = socket.gethostname()
        return self.convert(raw, native)


class HostPort(Kind):
    describe = "`host:port`"

    def convert(self, raw: object, native: bool) -> object:
        if not isinstance(raw, str):
            raise ValueError(f"must be host:port, got {raw!r}")
        split_host_port(raw)
        return raw


class GrpcTarget(Kind):
    describe = "`host:port` or gRPC target"
    _URI: Final = re.compile(r"(dns|unix|unix-abstract|ipv4|ipv6|vsock):\S+")

    def convert(self, raw: object, native: bool) -> object:
        if isinstance(raw, str) and self._URI.fullmatch(raw):
            return raw
        try:
            return HostPort().convert(raw, native)
        except ValueError:
            raise ValueError(
                f"must be host:port or a gRPC target such as dns:///host:port, got {raw!r}"
            ) from None


class ExistingFile(Kind):
    describe = "path of a file"
    optional = True

    def convert(self, raw: object, native: bool) -> object:
        if not isinstance(raw, str) or not os.path.isfile(raw):
            raise ValueError(f"must be the path of an existing file, got {raw!r}")
        return raw


class Secret(Kind):
    describe = "text (secret)"
    optional = True

    def convert(self, raw: object, native: bool) -> object:
        if not isinstance(raw, str):
            raise ValueError(f"must be a string (value not shown), got a value of type {type(raw).__name__}")
        return raw

    def show(self, value: object) -> object:
        return MASK if value else None


class Text(Kind):
    describe = "text"
    optional = True

    def convert(self, raw: object, native: bool) -> object:
        if not isinstance(raw, str) or not raw.strip() or not raw.isprintable():
            raise ValueError(f"must be non-empty printable text, got {raw!r}")
        return raw.strip()


class MysqlDsn(Kind):
    describe = "Go DSN (secret password)"
    optional = True

    def convert(self, raw: object, native: bool) -> object:
        if not isinstance(raw, str):
            raise ValueError(f"must be a string (value not shown), got a value of type {type(raw).__name__}")
        try:
            parse_go_dsn(raw.strip())
        except ValueError as exc:
            raise ValueError(f"{exc} (value not shown)") from None
        return raw.strip()

    def show(self, value: object) -> object:
        return parse_go_dsn(value).shown() if isinstance(value, str) else None


class RedisUrl(Kind):
    describe = "`redis://…`, `rediss://…`, `unix://…`"
    optional = True

    def convert(self, raw: object, native: bool) -> object:
        if not isinstance(raw, str):
            raise ValueError(
                f"must be a redis://, rediss:// or unix:// URL, got a value of type {type(raw).__name__}"
            )
        problem = self._problem(raw)
        if problem:
            raise ValueError(f"{problem}, got {redact(raw)!r}")
        return raw

    @staticmethod
    def _problem(url: str) -> str | None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return "must start with redis://, rediss:// or unix://"
        if re.search(r"\s", url):
            return "must not contain spaces"
        try:
            parts = urlsplit(url)
        except ValueError:  # its text quotes the netloc, password included: never shown
            return "is not a valid Redis URL (characters that normalise to '/', '?', '#' or '@')"
        try:
            port = parts.port
            redis.connection.parse_url(url)  # type: ignore[no-untyped-call, unused-ignore]
        except ValueError as exc:
            return f"is not a valid Redis URL ({redact(str(exc))})"
        if parts.scheme == "unix":
            return None if parts.path else "must name the socket path, as in unix:///run/redis.sock"
        if not parts.hostname:
            return "must name a host, as in redis://host:6379/0"
        if port == 0:
            return "must have a port from 1 to 65535"
        if parts.path.strip("/") and not parts.path.strip("/").isdigit():
            return "must end with a database number (/0) or nothing"
        return None

    def show(self, value: object) -> object:
        return redact(value) if isinstance(value, str) else value
