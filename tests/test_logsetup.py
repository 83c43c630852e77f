"""Log lines: JSON fields and extras, the text form, secrets filtered, never a crash."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from scheduler.config.load import load_settings
from scheduler.logsetup import configure_logging

SECRET = "s3cr3t-P@ss"
LOG = logging.getLogger("scheduler.test")


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def configured(fmt: str = "json", level: str = "debug", secrets: tuple[str, ...] = ()) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(fmt, level, stream=stream, secrets=secrets)  # type: ignore[arg-type]
    return stream


def test_json_line_fields_and_extras() -> None:
    stream = configured()
    extra = {"task_id": 42, "entry_id": "1-0", "attempt": 2, "duration_ms": 12.5, "code": "UNAVAILABLE",
             "consumer": "c1"}  # fmt: skip
    LOG.info("crawled %s in %d ms", "task 42", 12, extra=extra)
    (line,) = json_lines(stream)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    assert line["level"] == "info"
    assert line["logger"] == "scheduler.test"
    assert line["msg"] == "crawled task 42 in 12 ms"
    assert {k: line[k] for k in extra} == extra
    assert "exc" not in line


def test_exception_goes_to_exc() -> None:
    stream = configured()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        LOG.exception("task failed", extra={"task_id": 7})
    (line,) = json_lines(stream)
    assert line["level"] == "error"
    assert line["msg"] == "task failed"
    assert line["task_id"] == 7
    assert "Traceback" in line["exc"]
    assert "RuntimeError: boom" in line["exc"]


def test_one_line_per_record_even_with_newlines() -> None:
    stream = configured()
    LOG.warning("two\nlines", extra={"note": "a\nb"})
    assert len(stream.getvalue().splitlines()) == 1
    assert json_lines(stream)[0]["level"] == "warning"


def test_extra_named_like_a_base_field_does_not_replace_it() -> None:
    stream = configured()
    LOG.info("hello", extra={"ts": "mine", "level": "mine"})
    (line,) = json_lines(stream)
    assert line["extra_ts"] == "mine"
    assert line["extra_level"] == "mine"
    assert line["level"] == "info"


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_unserialisable_extras_never_crash() -> None:
    stream = configured()
    circular: dict[str, Any] = {}
    circular["self"] = circular
    LOG.info(
        "odd extras",
        extra={"obj": object(), "items": {3, 4}, "raw": b"\xff\x00", "nan": float("nan"),
               "loop": circular, "bad": Unprintable(), "when": (1, "a")},
    )  # fmt: skip
    (line,) = json_lines(stream)
    assert line["obj"].startswith("<object object")
    assert sorted(line["items"]) == [3, 4]
    assert line["raw"] == "\\xff\x00"
    assert line["nan"] == "nan"
    assert line["bad"] == "<unprintable Unprintable>"
    assert line["when"] == [1, "a"]


def test_bad_format_arguments_keep_the_line() -> None:
    # Straight to our handler: pytest's own capture handler on the root logger would raise first.
    stream = io.StringIO()
    handler = configure_logging("json", "info", stream=stream)
    handler.handle(LOG.makeRecord(LOG.name, logging.INFO, __file__, 1, "count %d", ("not a number",), None))
    (line,) = json_lines(stream)
    assert "count %d" in line["msg"]
    assert "not a number" in line["msg"]


def test_text_format() -> None:
    stream = configured("text")
    LOG.info("task %s done", 5, extra={"task_id": 5, "code": "OK", "detail": "two words", "empty": ""})
    line = stream.getvalue().rstrip("\n")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO    scheduler\.test: task 5 done "
        r'task_id=5 code=OK detail="two words" empty=""',
        line,
    )


def test_text_format_puts_the_traceback_after_the_line() -> None:
    stream = configured("text")
    try:
        raise ValueError("bad")
    except ValueError:
        LOG.exception("failed")
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith("scheduler.test: failed")
    assert rest[0].startswith("Traceback")
    assert rest[-1] == "ValueError: bad"


def test_level_threshold() -> None:
    stream = configured(level="warn")
    LOG.info("hidden")
    LOG.debug("hidden")
    LOG.warning("shown")
    assert [line["msg"] for line in json_lines(stream)] == ["shown"]


@pytest.mark.parametrize(("fmt", "level"), [("json", "verbose"), ("xml", "info")])
def test_bad_arguments(fmt: str, level: str) -> None:
    with pytest.raises(ValueError):
        configure_logging(fmt, level, stream=io.StringIO())  # type: ignore[arg-type]


def test_second_call_replaces_the_first_handler() -> None:
    first = configured()
    second = configured()
    LOG.info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1


def test_default_stream_is_the_current_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    LOG.info("to stderr")
    assert json.loads(capsys.readouterr().err)["msg"] == "to stderr"


def test_importing_configures_nothing() -> None:
    code = "import logging, scheduler.logsetup, scheduler.config; print(len(logging.getLogger().handlers))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0"


# --- secrets ----------------------------------------------------------------------------------------------


def test_redis_url_credentials_are_redacted_everywhere() -> None:
    stream = configured()
    url = "redis://admin:hunter2@cache:6379/0"
    try:
        raise ConnectionError(f"cannot reach {url}")
    except ConnectionError:
        LOG.exception("connect %s failed", url, extra={"target": url, "nested": {"urls": [url]}})
    text = stream.getvalue()
    assert "hunter2" not in text
    (line,) = json_lines(stream)
    assert line["msg"] == "connect redis://***@cache:6379/0 failed"
    assert line["target"] == "redis://***@cache:6379/0"
    assert line["nested"] == {"urls": ["redis://***@cache:6379/0"]}
    assert "cannot reach redis://***@cache:6379/0" in line["exc"]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_configured_secrets_are_redacted(fmt: str) -> None:
    stream = configured(fmt, secrets=(SECRET, ""))
    try:
        raise PermissionError(f"AUTH {SECRET} refused")
    except PermissionError:
        LOG.error("password is %s", SECRET, exc_info=True, extra={"password": SECRET, "n": 1})
    LOG.info("in a url: redis://cache/0?password=%s", SECRET.replace("@", "%40"))
    LOG.info("stack", stack_info=True, extra={"why": f"x{SECRET}x"})
    text = stream.getvalue()
    assert SECRET not in text
    assert "s3cr3t-P%40ss" not in text
    assert text.count("***") >= 5


def test_secrets_from_settings() -> None:
    settings = load_settings(
        env={"REDIS_URL": "redis://:url-secret-1@cache:6379/0", "REDIS_PASSWORD": "pw-2"}
    )
    stream = configured(secrets=settings.secrets())
    LOG.info("%s and %s and %s", "url-secret-1", "pw-2", settings.redis_url)
    assert json_lines(stream)[0]["msg"] == "*** and *** and redis://***@cache:6379/0"


def test_secrets_given_as_a_generator_are_all_used() -> None:
    stream = configured()
    configure_logging("json", "info", stream=stream, secrets=(s for s in ["alpha-secret", "beta-secret"]))
    LOG.info("alpha-secret beta-secret")
    assert json_lines(stream)[-1]["msg"] == "*** ***"
