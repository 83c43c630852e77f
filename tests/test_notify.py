"""The outbox mailer against a real redis-server and a real SMTP server (tests/smtp_sink.py)."""

from __future__ import annotations

import logging
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import redis

from scheduler.devtools.redis_server import free_port
from scheduler.results.mail_render import render
from scheduler.results.mailer import Mailer
from scheduler.results.smtp_send import MailSettings, smtp_connect
from tests.smtp_sink import SmtpSink

OUTBOX = "gh:outbox"
LOGGER = "scheduler.results.mailer"
SECRET = "hunter2-s3cret-pass"


def add(client: redis.Redis, **changes: str | None) -> str:
    fields: dict[str, str | None] = {
        "kind": "new_item",
        "task_id": "42",
        "keyword": "switch oled",
        "to": "buyer@example.com",
        "source_id": "m123",
        "title": "Nintendo Switch",
        "price": "12800",
        "old_price": "",
        "image_url": "https://static.example.jp/m123.jpg",
        "item_url": "https://jp.mercari.com/item/m123",
    }
    fields.update(changes)
    entry_id = client.xadd(OUTBOX, {k: v for k, v in fields.items() if v is not None})
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def pending(client: redis.Redis) -> int:
    count: int = client.xpending(OUTBOX, "mailer")["pending"]
    return count


def until(done: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.02)
    return done()


def html_part(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def text_part(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


@dataclass
class Running:
    mailer: Mailer
    thread: threading.Thread
    halt: threading.Event
    sent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def stop(self, within: float = 2.0) -> float:
        started = time.monotonic()
        self.halt.set()
        self.thread.join(within)
        assert not self.thread.is_alive(), "run() did not stop after halt"
        return time.monotonic() - started


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as server:
        yield server


@pytest.fixture
def start(r: redis.Redis, sink: SmtpSink) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def make(
        consumer: str = "mailer-1",
        *,
        client: redis.Redis | None = None,
        settings: MailSettings | None = None,
        **kw: Any,
    ) -> Running:
        kw.setdefault("wait_s", (0.01, 0.05))
        kw.setdefault("block_ms", 100)
        settings = settings or MailSettings(
            "127.0.0.1", sink.port, from_email="GoodsHunter <alerts@goodshunter.test>"
        )
        halt = threading.Event()
        sent: list[str] = []
        failed: list[str] = []
        mailer = Mailer(client or r, OUTBOX, consumer, settings, sent=sent.append, failed=failed.append, **kw)
        thread = threading.Thread(target=mailer.run, args=(halt,), name=f"mailer-{consumer}", daemon=True)
        one = Running(mailer, thread, halt, sent, failed)
        running.append(one)
        thread.start()
        return one

    yield make
    for one in running:
        if one.thread.is_alive():
            one.stop()


def test_new_item_is_mailed_once_with_escaped_html(
    r: redis.Redis, sink: SmtpSink, start: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    entry_id = add(r, title='<script>alert("x")</script> Switch & Dock', task_id="42")
    running = start()
    assert sink.wait(1)
    assert until(lambda: pending(r) == 0 and running.sent == ["new_item"])

    received = sink.received[0]
    message = received.message
    assert message["Subject"] == '[GoodsHunter] New item: <script>alert("x")</script> Switch & Dock'
    assert message["To"] == "buyer@example.com"
    assert received.rcpt_tos == ("buyer@example.com",)
    assert received.mail_from == "alerts@goodshunter.test"
    assert message["Message-ID"] == f"<{entry_id}.42@goodshunter-scheduler>"
    body = html_part(message)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; Switch &amp; Dock" in body
    assert "<script>" not in body
    assert "¥12,800" in body
    assert '<a href="https://jp.mercari.com/item/m123">' in body
    assert '<img src="https://static.example.jp/m123.jpg"' in body
    assert "switch oled" in body
    plain = text_part(message)
    assert "¥12,800" in plain and "https://jp.mercari.com/item/m123" in plain

    receipt_ttl = r.ttl(f"{OUTBOX}:sent:{entry_id}")
    assert 7 * 86400 - 60 < receipt_ttl <= 7 * 86400
    mailed = [rec for rec in caplog.records if rec.getMessage() == "notification mailed"]
    assert len(mailed) == 1
    assert (mailed[0].task_id, mailed[0].kind, mailed[0].entry_id) == ("42", "new_item", entry_id)  # type: ignore[attr-defined]
    time.sleep(0.1)
    assert len(sink.received) == 1 and running.failed == []


def test_price_drop_shows_old_and_new_price(
    r: redis.Redis, sink: SmtpSink, start: Callable[..., Running]
) -> None:
    add(r, kind="price_drop", title="Switch", price="12800", old_price="15000")
    start()
    assert sink.wait(1)
    message = sink.messages[0]
    assert message["Subject"] == "[GoodsHunter] Price drop: Switch ¥15,000 → ¥12,800"
    assert "<s>¥15,000</s> → <strong>¥12,800</strong>" in html_part(message)
    assert "¥15,000 → ¥12,800" in text_part(message)


def test_unsafe_urls_are_left_out() -> None:
    fields = {"kind": "new_item", "to": "a@example.com", "title": "t", "price": "1", "task_id": "7"}
    message = render(
        fields | {"item_url": "javascript:alert(1)", "image_url": "data:image/png;base64,AAAA"}, "1-0"
    )
    body = html_part(message)
    assert "javascript:" not in body and "data:" not in body and "<img" not in body and "<a " not in body


def test_two_mailers_mail_each_event_once(
    r: redis.Redis, sink: SmtpSink, start: Callable[..., Running]
) -> None:
    first, second = start("mailer-a"), start("mailer-b")
    ids = [add(r, task_id=str(n), title=f"item {n}") for n in range(30)]
    assert sink.wait(30)
    assert until(lambda: pending(r) == 0)
    time.sleep(0.15)
    got = [m["Message-ID"] for m in sink.messages]
    assert sorted(got) == sorted(f"<{entry_id}.{n}@goodshunter-scheduler>" for n, entry_id in enumerate(ids))
    assert len(first.sent) + len(second.sent) == 30


def test_receipt_means_ack_without_a_second_mail(
    r: redis.Redis, sink: SmtpSink, start: Callable[..., Running]
) -> None:
    done = add(r, task_id="1")
    r.set(f"{OUTBOX}:sent:{done}", "mailer-0 1700000000")
    fresh = add(r, task_id="2")
    running = start()
    assert sink.wait(1)
    assert until(lambda: pending(r) == 0)
    time.sleep(0.1)
    assert [m["Message-ID"] for m in sink.messages] == [f"<{fresh}.2@goodshunter-scheduler>"]
    assert running.sent == ["new_item"]


def test_one_connection_for_a_burst(r: redis.Redis, sink: SmtpSink, start: Callable[..., Running]) -> None:
    for n in range(5):
        add(r, task_id=str(n))
    start()
    assert sink.wait(5)
    assert len({rec.peer for rec in sink.received}) == 1


def test_refusing_server_is_tried_attempts_times_then_failed_and_acked(
    r: redis.Redis, sink: SmtpSink, start: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    sink.refuse = "451 4.3.0 Try again later"
    entry_id = add(r)
    running = start(attempts=3)
    assert until(lambda: running.failed == ["new_item"])
    assert sink.attempts == 3
    assert pending(r) == 0
    assert not r.exists(f"{OUTBOX}:sent:{entry_id}")
    warnings = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "after 3 tries" in warnings[0].getMessage() and "451" in warnings[0].getMessage()
    assert warnings[0].exc_info is None

    sink.refuse = None  # the server recovers: the thread is still there for the next event
    assert running.thread.is_alive()
    add(r, task_id="43")
    assert sink.wait(1)
    assert until(lambda: running.sent == ["new_item"])
    assert running.failed == ["new_item"]


def test_permanent_refusal_is_not_retried(
    r: redis.Redis, sink: SmtpSink, start: Callable[..., Running]
) -> None:
    sink.refuse = "554 5.7.1 Message rejected"
    add(r)
    running = start(attempts=3)
    assert until(lambda: running.failed == ["new_item"])
    assert until(lambda: pending(r) == 0)
    time.sleep(0.1)
    assert sink.attempts == 1


def test_unreachable_server_fails_after_attempts(r: redis.Redis, start: Callable[..., Running]) -> None:
    add(r)
    running = start(attempts=2, settings=MailSettings("127.0.0.1", free_port(), from_email="a@b.test"))
    assert until(lambda: running.failed == ["new_item"])
    assert until(lambda: pending(r) == 0)


def test_malformed_entry_is_acked_and_the_next_one_mailed(
    r: redis.Redis, sink: SmtpSink, start: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    add(r, to=None)
    add(r, kind=None)
    add(r, to="victim@example.com\r\nBcc: everyone@example.com")
    add(r, task_id="9")
    running = start()
    assert sink.wait(1)
    assert until(lambda: pending(r) == 0)
    assert sink.received[0].rcpt_tos == ("buyer@example.com",)
    assert running.failed == ["new_item", "unknown", "new_item"]
    assert len([rec for rec in caplog.records if rec.levelno == logging.WARNING]) == 3


def test_entry_of_a_dead_consumer_is_reclaimed_and_mailed_once(any_r: redis.Redis, sink: SmtpSink) -> None:
    any_r.xgroup_create(OUTBOX, "mailer", id="0", mkstream=True)
    entry_id = add(any_r)
    any_r.xreadgroup("mailer", "dead-daemon", {OUTBOX: ">"}, count=10)  # read, never acked: it died
    halt = threading.Event()
    mailer = Mailer(
        any_r, OUTBOX, "mailer-live", MailSettings("127.0.0.1", sink.port), reclaim_idle_s=0.3, block_ms=100
    )
    thread = threading.Thread(target=mailer.run, args=(halt,), daemon=True)
    thread.start()
    try:
        assert sink.wait(1, timeout=5)
        assert until(lambda: pending(any_r) == 0)
        time.sleep(0.35)  # a few more reclaim sweeps: still one mail
        assert [m["Message-ID"] for m in sink.messages] == [f"<{entry_id}.42@goodshunter-scheduler>"]
    finally:
        halt.set()
        thread.join(3)
    assert not thread.is_alive()


def test_reclaimed_entry_without_payload_is_acked_unsent(any_r: redis.Redis, sink: SmtpSink) -> None:
    any_r.xgroup_create(OUTBOX, "mailer", id="0", mkstream=True)
    gone = add(any_r)
    kept = add(any_r, task_id="43")
    any_r.xreadgroup("mailer", "dead-daemon", {OUTBOX: ">"}, count=10)
    any_r.xdel(OUTBOX, gone)  # trimmed while its consumer was down
    halt = threading.Event()
    mailer = Mailer(
        any_r, OUTBOX, "mailer-live", MailSettings("127.0.0.1", sink.port), reclaim_idle_s=0.2, block_ms=50
    )
    thread = threading.Thread(target=mailer.run, args=(halt,), daemon=True)
    thread.start()
    try:
        assert sink.wait(1)
        assert until(lambda: pending(any_r) == 0)
        assert [m["Message-ID"] for m in sink.messages] == [f"<{kept}.43@goodshunter-scheduler>"]
    finally:
        halt.set()
        thread.join(3)
    assert not thread.is_alive()


def test_halt_stops_run_promptly_even_during_a_backoff(
    r: redis.Redis, sink: SmtpSink, start: Callable[..., Running]
) -> None:
    idle = start("idle", block_ms=1000)  # the default: halt is seen between one-second blocking reads
    assert until(lambda: r.exists(OUTBOX) == 1)
    assert idle.stop() < 2.0

    sink.refuse = "451 4.3.0 Try again later"
    add(r)
    backing_off = start("mailer-1", attempts=3, wait_s=(30.0, 30.0))
    assert sink.wait_attempts(1)
    time.sleep(0.1)
    assert backing_off.stop() < 2.0
    # halted mid-retry: neither failed nor acked, so the same consumer resumes it on its next start
    assert backing_off.failed == [] and pending(r) == 1
    sink.refuse = None
    resumed = start("mailer-1", reclaim_idle_s=3600)
    assert sink.wait(1)
    assert until(lambda: pending(r) == 0)
    assert resumed.sent == ["new_item"]


def test_redis_errors_are_a_warning_and_the_thread_goes_on(
    r: redis.Redis, sink: SmtpSink, start: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    r.set(OUTBOX, "not a stream")  # XGROUP CREATE answers WRONGTYPE
    running = start()
    assert until(lambda: any("Redis error" in rec.getMessage() for rec in caplog.records))
    r.delete(OUTBOX)
    add(r)
    assert sink.wait(1, timeout=5)
    r.xgroup_destroy(OUTBOX, "mailer")  # NOGROUP on the next read: the group is made again
    add(r, task_id="43")
    assert sink.wait(2, timeout=5)
    assert until(lambda: running.sent == ["new_item", "new_item"])
    assert running.thread.is_alive()


def test_smtp_password_never_logged(
    r: redis.Redis, sink: SmtpSink, start: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = MailSettings(
        "127.0.0.1", sink.port, smtp_user="alerts", smtp_pass=SECRET, from_email="a@b.test"
    )
    assert SECRET not in repr(settings)
    add(r)
    running = start(settings=settings, attempts=2)
    # the sink offers no STARTTLS: the password is not sent in clear, and that is a permanent failure
    assert until(lambda: running.failed == ["new_item"])
    assert sink.attempts == 0
    warning = next(rec for rec in caplog.records if rec.levelno == logging.WARNING)
    assert "STARTTLS" in warning.getMessage() and "after 1 try" in warning.getMessage()
    running.stop()
    assert SECRET not in caplog.text
    assert all(SECRET not in repr(rec.__dict__) for rec in caplog.records)


def test_starttls_then_login_when_the_server_offers_it(
    r: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    cert, key = SmtpSink.self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the default context trusts the test certificate
    connections: list[smtplib.SMTP] = []

    def counting(settings: MailSettings) -> smtplib.SMTP:
        connections.append(smtp_connect(settings))
        return connections[-1]

    with SmtpSink(tls=(cert, key), auth=("alerts", SECRET)) as secure:
        add(r, task_id="1")
        add(r, task_id="2")
        settings = MailSettings(
            "127.0.0.1", secure.port, smtp_user="alerts", smtp_pass=SECRET, from_email="a@b.test"
        )
        running = start(settings=settings, connect=counting)
        assert secure.wait(2)
        assert all(rec.tls and rec.login == "alerts" for rec in secure.received)
        assert until(lambda: running.sent == ["new_item", "new_item"])
        running.stop()
    assert len(connections) == 1  # both mails over one connection
    assert SECRET not in caplog.text
