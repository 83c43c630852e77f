"""The mailer thread: e-mail notifications of GoodsHunter events (a new item, a price drop), mailed
from the outbox stream, retried, counted, a receipt per event.

A Lua script XADDs one outbox entry per event atomically with the dedup-hash update, so each event is in
the outbox exactly once however often a crawl runs. A ``Mailer`` thread turns the entries into mails
through a consumer group (``mailer``); any number of daemons may run one on the same outbox.

Per entry, in this order:

1. a receipt ``<outbox>:sent:<entry id>`` already exists: the mail went out before, only XACK;
2. before every SMTP attempt the entry's lease is renewed (its idle time reset, only while this consumer
   still owns it), so another mailer's XAUTOCLAIM does not take over an entry that is being retried; an
   entry another mailer has taken over meanwhile is left to it, unsent here;
3. the SMTP server accepted the mail: SET the receipt (7 days) and XACK in one MULTI;
4. no try succeeded (``attempts`` tries, or one when the server refuses permanently, a 5xx reply): one
   warning line, the ``failed`` hook, XACK. A broken SMTP server is a metric, never a growing backlog.

The duplicate window left open: the server has accepted a mail and this process dies (or cannot reach
Redis for longer than ``reclaim_idle_s``) before the receipt is written; another mailer then reclaims the
entry and sends it again, with the same Message-ID, so mail systems can recognise the copy. A Redis
error at the receipt alone (the process lives) does not resend: the entry is remembered and only its
receipt and XACK are written once Redis answers.

The mail itself is made by ``mail_render`` and sent through ``smtp_send``; the reads, leases, receipts
and acknowledgements on the stream are ``outbox``'s.
"""

from __future__ import annotations

import logging
import smtplib
import threading
import time
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any, Final

import redis
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from scheduler.results.mail_render import DEFAULT_FROM, KINDS, one_line, render
from scheduler.results.outbox import Entry, Outbox, text
from scheduler.results.smtp_send import Connect, MailSettings, SmtpConnection, transient

log = logging.getLogger(__name__)

BLOCK_MS: Final = 1000  # XREADGROUP BLOCK: a set halt is seen within about a second
REDIS_BACKOFF_S: Final = 1.0
OUTAGE_WARN_EVERY_S: Final = 60.0  # one warning per Redis outage, repeated while it lasts


class _Halted(Exception):
    """``halt`` was set during a back-off: the entry stays pending for the next run or another mailer."""


class _LeaseLost(Exception):
    """Another mailer has taken the entry over (or it was acknowledged): it is no longer ours to send."""


class Mailer:
    """Mails the entries of one outbox stream as consumer ``consumer`` of ``group``; ``run`` is the body
    of its thread. ``sent(kind)`` / ``failed(kind)`` are metric hooks (kind: new_item, price_drop or
    unknown). ``wait_s`` is the SMTP retry back-off: first wait and cap, doubling in between. ``block_ms``
    bounds each blocking read, and so how long a set ``halt`` may go unseen (at most 1000)."""

    def __init__(
        self,
        client: redis.Redis,
        outbox: str,
        consumer: str,
        settings: MailSettings,
        *,
        group: str = "mailer",
        sent: Callable[[str], None] | None = None,
        failed: Callable[[str], None] | None = None,
        attempts: int = 3,
        reclaim_idle_s: float = 60.0,
        wait_s: tuple[float, float] = (1.0, 8.0),
        block_ms: int = BLOCK_MS,
        connect: Connect | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if reclaim_idle_s <= 0:
            raise ValueError("reclaim_idle_s must be positive")
        if not 1 <= block_ms <= BLOCK_MS:
            raise ValueError(f"block_ms must be 1..{BLOCK_MS}: halt is only seen between blocking reads")
        self.client = client
        self.outbox = outbox
        self.consumer = consumer
        self.settings = settings
        self.group = group
        self.sent = sent
        self.failed = failed
        self.attempts = attempts
        self.reclaim_idle_s = reclaim_idle_s
        self.wait_s = wait_s
        self.block_ms = block_ms
        self._sender = settings.from_email or DEFAULT_FROM
        self._outbox = Outbox(
            client, outbox, group, consumer, reclaim_idle_s=reclaim_idle_s, block_ms=block_ms
        )
        self._smtp = SmtpConnection(settings, connect)
        self._unrecorded: set[str] = set()  # mailed, but the receipt write failed: never send again
        self._outage_since: float | None = None
        self._warned_at = 0.0
        self._tries = 0

    def run(self, halt: threading.Event) -> None:
        """Mail entries until ``halt`` is set (seen within about a second). Never raises."""
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.wait_s[0], max=self.wait_s[1]),
            retry=retry_if_exception(transient),
            sleep=lambda seconds: self._sleep(halt, seconds),
            before_sleep=_log_retry,
            reraise=True,
        )
        self._outbox.rewind()
        try:
            while not halt.is_set():
                try:
                    self._handle(self._outbox.next_batch(), retrying, halt)
                    self._redis_ok()
                except redis.RedisError as exc:
                    self._redis_failed(exc)
                    halt.wait(REDIS_BACKOFF_S)
                except Exception:  # a bug must not end the thread: one report, a pause, go on
                    log.exception("mailer loop failed; going on", extra={"stream": self.outbox})
                    self._outbox.rewind()
                    halt.wait(REDIS_BACKOFF_S)
                finally:
                    self._smtp.close()  # one connection per batch (a burst), none held while idle
        finally:
            self._smtp.close()

    # -- one entry -------------------------------------------------------------------------------------

    def _handle(self, entries: list[Entry], retrying: Retrying, halt: threading.Event) -> None:
        for entry_id, raw in entries:
            if halt.is_set():
                return  # the rest stay pending: re-read on the next run, or reclaimed by another mailer
            try:
                self._one(entry_id, raw, retrying)
            except _Halted:
                return

    def _one(self, entry_id: str, raw: Mapping[Any, Any] | None, retrying: Retrying) -> None:
        if not raw:
            log.warning(
                "outbox entry has no payload (trimmed or deleted); acknowledged", extra={"entry_id": entry_id}
            )
            self._hook(self.failed, "unknown")
            self._outbox.ack(entry_id)
            return
        fields = {text(k): text(v) for k, v in raw.items()}
        kind = fields.get("kind", "")
        extra = {"task_id": fields.get("task_id", ""), "kind": kind, "entry_id": entry_id}
        if entry_id in self._unrecorded:
            self._outbox.record(entry_id)
            self._unrecorded.discard(entry_id)
            return
        if self._outbox.has_receipt(entry_id):
            log.info("outbox entry was mailed before (receipt found); acknowledged", extra=extra)
            self._outbox.ack(entry_id)
            return
        try:
            message = render(fields, entry_id, self._sender)
        except Exception as exc:
            log.warning("malformed outbox entry, acknowledged unsent: %s", _brief(exc), extra=extra)
            self._hook(self.failed, kind if kind in KINDS else "unknown")
            self._outbox.ack(entry_id)
            return
        try:
            self._send(entry_id, message, retrying)
        except _LeaseLost:
            log.info("outbox entry taken over by another mailer; left to it", extra=extra)
            return
        except (_Halted, redis.RedisError):
            raise  # not a mail failure: the entry stays pending
        except Exception as exc:
            log.warning(
                "notification not mailed after %d %s: %s",
                self._tries,
                "try" if self._tries == 1 else "tries",
                _brief(exc),
                extra=extra,
            )
            self._hook(self.failed, kind)
            self._outbox.ack(entry_id)
            return
        # the receipt first, the log line and the count after: a kill between the SMTP server's accept and
        # the receipt resends the mail (same Message-ID); nothing else may sit in that window
        try:
            self._outbox.record(entry_id)
        except redis.RedisError:
            self._unrecorded.add(entry_id)
            raise
        finally:  # mailed, whether or not the receipt was written
            log.info("notification mailed", extra=extra)
            self._hook(self.sent, kind)

    def _send(self, entry_id: str, message: EmailMessage, retrying: Retrying) -> None:
        to = parseaddr(str(message["To"]))[1]
        sender = parseaddr(self._sender)[1] or DEFAULT_FROM
        self._tries = 0
        for attempt in retrying:
            with attempt:
                self._tries += 1
                if not self._outbox.renew_lease(entry_id):
                    raise _LeaseLost(entry_id)
                self._smtp.send(message, sender, to)

    @staticmethod
    def _sleep(halt: threading.Event, seconds: float) -> None:
        if halt.wait(seconds):
            raise _Halted

    @staticmethod
    def _hook(hook: Callable[[str], None] | None, kind: str) -> None:
        if hook is None:
            return
        try:
            hook(kind)
        except Exception as exc:
            log.warning("mailer metric hook failed: %s", _brief(exc))

    # -- Redis outages ---------------------------------------------------------------------------------

    def _redis_failed(self, exc: redis.RedisError) -> None:
        now = time.monotonic()
        self._outbox.after_error(exc)
        if self._outage_since is None or now - self._warned_at >= OUTAGE_WARN_EVERY_S:
            log.warning(
                "mailer: Redis error, retrying every %.0f s: %s",
                REDIS_BACKOFF_S,
                _brief(exc),
                extra={"stream": self.outbox},
            )
            self._warned_at = now
        if self._outage_since is None:
            self._outage_since = now

    def _redis_ok(self) -> None:
        if self._outage_since is not None:
            log.info(
                "mailer: Redis answers again",
                extra={"stream": self.outbox, "outage_s": round(time.monotonic() - self._outage_since, 1)},
            )
            self._outage_since = None


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.debug(
        "SMTP attempt %d failed, next in %.1f s: %s",
        state.attempt_number,
        wait,
        _brief(exc) if exc else "?",
    )


def _brief(exc: BaseException) -> str:
    """A one-line description of an error, for a log line (no traceback, no recipient address)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):  # str() of it is the address → reply mapping
        detail = " ".join(f"{code} {text(reply)}" for code, reply in list(exc.recipients.values())[:1])
    elif isinstance(exc, smtplib.SMTPResponseException):
        detail = f"{exc.smtp_code} {text(exc.smtp_error)}"
    else:
        detail = str(exc)
    detail = one_line(detail)[:300]
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
