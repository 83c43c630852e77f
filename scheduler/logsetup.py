"""Logging set-up for the command line: JSON lines (the daemon) or readable text, secrets filtered out.

Only the CLI calls ``configure_logging``; library modules just use ``logging.getLogger(__name__)`` and
pass context with ``extra=`` (``task_id``, ``entry_id``, ``attempt``, ``duration_ms``, ``code``...),
which becomes fields of the JSON line or ``key=value`` pairs of the text line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO
from urllib.parse import quote

from scheduler.config.redaction import MASK, redact

__all__ = ["JsonFormatter", "SecretFilter", "TextFormatter", "configure_logging"]

_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "warn": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}  # fmt: skip
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_BASE_FIELDS: Final = ("ts", "level", "logger", "msg", "exc", "stack")


_PLAIN: Final = frozenset({str, int, bool, type(None)})
_CLEAN: Final = "_clean_extras"  # where SecretFilter leaves the extras it made safe, for the formatter


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record, in the order they were given."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k[0] != "_"}


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON types; whatever ``json`` cannot write becomes its ``repr`` (never an error)."""
    if type(value) in _PLAIN or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if depth < 5 and isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if depth < 5 and isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    try:
        return repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


class SecretFilter(logging.Filter):
    """Renders each record's message, exception and extras once, with secrets replaced by ``***``.

    Redacted: the ``user:password@`` part of any URL, ``?password=`` query values, and each of
    ``secrets`` (also in its percent-encoded form, as it appears inside a URL). Extras come out as plain
    JSON values, so a formatter can never fail on them.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        given = [s for s in secrets if s]
        words = set(given) | {quote(s, safe="") for s in given}
        self.secrets = sorted(words, key=len, reverse=True)  # longest first: no partial leftovers

    def redact(self, text: str) -> str:
        text = redact(text)
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def _safe(self, value: Any) -> Any:
        """An extra as a plain JSON value with secrets masked (ints and strings, nearly all, go quickest)."""
        kind = type(value)
        if kind in _PLAIN:
            return self.redact(value) if kind is str else value
        return self._clean(_jsonable(value))

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._clean(v) for v in value]
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as exc:  # bad %-arguments must not lose the line
            message = f"{record.msg!r} % {record.args!r} ({type(exc).__name__}: {exc})"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        clean = {key: self._safe(value) for key, value in extras(record).items()}
        record.__dict__.update(clean)  # other handlers (a test's capture) see the redacted values too
        setattr(record, _CLEAN, clean)  # the formatter takes them as they are: read and converted once
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, the extras, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        clean: dict[str, Any] | None = getattr(record, _CLEAN, None)
        if clean is None:  # not through SecretFilter
            clean = {key: _jsonable(value) for key, value in extras(record).items()}
        for key, value in clean.items():
            line[f"extra_{key}" if key in _BASE_FIELDS else key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=repr)


class TextFormatter(logging.Formatter):
    """``2025-01-02T03:04:05.678Z INFO    scheduler.daemon.app: message key=value``, then any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), f"{record.levelname:<7}", f"{record.name}:", record.getMessage()]
        clean: dict[str, Any] | None = getattr(record, _CLEAN, None)
        for key, value in (extras(record) if clean is None else clean).items():
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)
            if not shown or any(c.isspace() or c in '"=' for c in shown):
                shown = json.dumps(shown, ensure_ascii=False)
            parts.append(f"{key}={shown}")
        text = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + record.stack_info
        return text


def configure_logging(
    fmt: Literal["json", "text"] = "json",
    level: str = "info",
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> logging.Handler:
    """Send every log record of the process to ``stream`` (default: the current ``sys.stderr``).

    Replaces the handler of an earlier call, leaves other handlers alone, and returns the new handler.
    """
    try:
        threshold = _LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning or error") from None
    if fmt not in ("json", "text"):
        raise ValueError(f"unknown log format {fmt!r}: use json or text")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.set_name(__name__)
    handler.addFilter(SecretFilter(secrets))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == __name__]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(threshold)
    # no line shows where a call was made, nor which thread or process made it: logging then skips the
    # stack walk and those look-ups on every record (its documented optimisation; a third of a line's cost)
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    return handler
