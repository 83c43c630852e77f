"""E-mail notifications of GoodsHunter events (a new item, a price drop), mailed from the outbox stream.

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
"""

from __future__ import annotations

import html
import logging
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, parseaddr
from typing import Any, Final
from urllib.parse import urlsplit

import redis
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

__all__ = ["MailSettings", "Mailer", "render", "smtp_connect"]

log = logging.getLogger(__name__)

KINDS: Final = frozenset({"new_item", "price_drop"})
SMTP_TIMEOUT_S: Final = 10.0  # smtplib's timeout: each blocking step of a connection
IMPLICIT_TLS_PORT: Final = 465
RECEIPT_TTL_S: Final = 7 * 24 * 3600
READ_COUNT: Final = 50
BLOCK_MS: Final = 1000  # XREADGROUP BLOCK: a set halt is seen within about a second
REDIS_BACKOFF_S: Final = 1.0
OUTAGE_WARN_EVERY_S: Final = 60.0  # one warning per Redis outage, repeated while it lasts
DEFAULT_FROM: Final = "goodshunter-scheduler@localhost"
MESSAGE_ID_DOMAIN: Final = "goodshunter-scheduler"
SUBJECT_TITLE_MAX: Final = 120

Entry = tuple[str, Mapping[Any, Any] | None]  # (entry id, raw fields; empty or None: payload gone)

# Renew this consumer's lease on one outbox entry: XCLAIM to itself resets the idle time (JUSTID: no
# delivery counted), only while it still owns the entry. 1: still ours; 0: acknowledged or taken over.
_LEASE: Final = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p[1] == nil or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


@dataclass(frozen=True)
class MailSettings:
    """Where and how to send. Port 465 is TLS from the start; any other port upgrades with STARTTLS when
    the server offers it. Credentials are only ever sent over TLS."""

    smtp_host: str
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_pass: str | None = field(default=None, repr=False)
    from_email: str = ""


class _PlaintextLogin(smtplib.SMTPException):
    """The server offers no TLS, and a login would send the password in clear."""


class _Halted(Exception):
    """``halt`` was set during a back-off: the entry stays pending for the next run or another mailer."""


class _LeaseLost(Exception):
    """Another mailer has taken the entry over (or it was acknowledged): it is no longer ours to send."""


Connect = Callable[[MailSettings], smtplib.SMTP]


def smtp_connect(settings: MailSettings) -> smtplib.SMTP:
    """An SMTP connection, TLS when possible (465: implicit; else STARTTLS when offered), logged in when
    ``smtp_user`` is set. Raises smtplib/OSError errors; the connection is closed on any failure."""
    context = ssl.create_default_context()
    server: smtplib.SMTP
    if settings.smtp_port == IMPLICIT_TLS_PORT:
        server = smtplib.SMTP_SSL(
            settings.smtp_host, settings.smtp_port, timeout=SMTP_TIMEOUT_S, context=context
        )
        tls = True
    else:
        server = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=SMTP_TIMEOUT_S)
        tls = False
    try:
        server.ehlo()
        if not tls and server.has_extn("starttls"):
            server.starttls(context=context)
            server.ehlo()
            tls = True
        if settings.smtp_user:
            if not tls:
                raise _PlaintextLogin(
                    "server offers no STARTTLS: refusing to send the SMTP password in clear"
                )
            server.login(settings.smtp_user, settings.smtp_pass or "")
    except BaseException:
        server.close()
        raise
    return server


# -- rendering ---------------------------------------------------------------------------------------------


def render(fields: Mapping[str, str], entry_id: str, from_email: str = "") -> EmailMessage:
    """The mail of one outbox entry: an HTML body with a plain-text alternative.

    The Message-ID derives from the entry id and task id only, so a re-sent event carries the same one.
    Raises ValueError on an entry that cannot make a mail (unknown ``kind``, no usable ``to``).
    """
    kind = fields.get("kind", "")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    to = _recipient(fields.get("to", ""))
    task_id = fields.get("task_id", "")
    title = _one_line(fields.get("title", "")) or "(untitled)"
    keyword = _one_line(fields.get("keyword", ""))
    price = _yen(fields.get("price", ""))
    drop = kind == "price_drop"
    old_price = _yen(fields.get("old_price", "")) if drop else ""
    image_url = _web_url(fields.get("image_url", ""))
    item_url = _web_url(fields.get("item_url", ""))

    short = title if len(title) <= SUBJECT_TITLE_MAX else title[: SUBJECT_TITLE_MAX - 1] + "…"
    heading = "Price drop" if drop else "New item"
    subject = f"[GoodsHunter] {heading}: {short}" + (f" {old_price} → {price}" if drop else "")

    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = from_email or DEFAULT_FROM
    message["To"] = to
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = f"<{_token(entry_id)}.{_token(task_id) or 'notask'}@{MESSAGE_ID_DOMAIN}>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    price_text = f"{old_price} → {price}" if drop else price
    lines = [f"{heading} for your GoodsHunter task “{keyword}”:", "", title, f"Price: {price_text}"]
    if item_url:
        lines.append(item_url)
    message.set_content("\n".join(lines) + "\n")
    message.add_alternative(
        _html(heading, title, keyword, task_id, price, old_price, image_url, item_url), subtype="html"
    )
    return message


def _html(
    heading: str,
    title: str,
    keyword: str,
    task_id: str,
    price: str,
    old_price: str,
    image_url: str,
    item_url: str,
) -> str:
    e = html.escape
    prices = (
        f"<s>{e(old_price)}</s> → <strong>{e(price)}</strong>"
        if old_price
        else f"<strong>{e(price)}</strong>"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html><body style="font-family: sans-serif">',
        f"<h2>{e(heading)}</h2>",
        f"<p><strong>{e(title)}</strong></p>",
        f"<p>Price: {prices}</p>",
    ]
    if image_url:
        parts.append(f'<p><img src="{e(image_url)}" alt="{e(title)}" style="max-width: 320px"></p>')
    if item_url:
        parts.append(f'<p><a href="{e(item_url)}">View the item</a></p>')
    parts.append(f'<p style="color: #666">Task: {e(keyword)} (#{e(task_id)})</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _recipient(raw: str) -> str:
    """One address, as the To header; no line breaks (header injection), no lists."""
    if "\r" in raw or "\n" in raw:
        raise ValueError("recipient contains a line break")
    found = getaddresses([raw])
    if len(found) != 1 or "@" not in found[0][1] or any(c.isspace() for c in found[0][1]):
        raise ValueError("recipient is not one e-mail address")
    return raw.strip()


def _one_line(value: str) -> str:
    return " ".join(value.split())


def _yen(raw: str) -> str:
    text = _one_line(raw)
    return f"¥{int(text):,}" if text.isdigit() else (f"¥{text}" if text else "¥?")


def _web_url(raw: str) -> str:
    """``raw`` when it is an http(s) URL, else "" (no javascript: or data: links in a mail)."""
    url = raw.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    return url if parts.scheme in ("http", "https") and parts.netloc and url.isprintable() else ""


def _token(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "", value)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _brief(exc: BaseException) -> str:
    """A one-line description of an error, for a log line (no traceback, no recipient address)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):  # str() of it is the address → reply mapping
        detail = " ".join(f"{code} {_text(reply)}" for code, reply in list(exc.recipients.values())[:1])
    elif isinstance(exc, smtplib.SMTPResponseException):
        detail = f"{exc.smtp_code} {_text(exc.smtp_error)}"
    else:
        detail = str(exc)
    detail = _one_line(detail)[:300]
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _transient(exc: BaseException) -> bool:
    """Worth another try: 4xx replies, lost connections, network errors. 5xx replies, a failed certificate
    check and a refused plaintext login are permanent."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(400 <= code < 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    if isinstance(exc, smtplib.SMTPException | ssl.SSLCertVerificationError):
        return False
    return isinstance(exc, OSError)


# -- the mailer --------------------------------------------------------------------------------------------


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
        self._connect: Connect = connect or smtp_connect
        self._sender = settings.from_email or DEFAULT_FROM
        self._lease = client.register_script(_LEASE)
        self._smtp: smtplib.SMTP | None = None
        self._group_ready = False
        self._pending_cursor: str | None = "0"  # this consumer's own pending entries are read first
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._unrecorded: set[str] = set()  # mailed, but the receipt write failed: never send again
        self._outage_since: float | None = None
        self._warned_at = 0.0
        self._tries = 0

    def receipt_key(self, entry_id: str) -> str:
        return f"{self.outbox}:sent:{entry_id}"

    def run(self, halt: threading.Event) -> None:
        """Mail entries until ``halt`` is set (seen within about a second). Never raises."""
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.wait_s[0], max=self.wait_s[1]),
            retry=retry_if_exception(_transient),
            sleep=lambda seconds: self._sleep(halt, seconds),
            before_sleep=_log_retry,
            reraise=True,
        )
        self._pending_cursor = "0"
        try:
            while not halt.is_set():
                try:
                    self._handle(self._next_batch(), retrying, halt)
                    self._redis_ok()
                except redis.RedisError as exc:
                    self._redis_failed(exc)
                    halt.wait(REDIS_BACKOFF_S)
                except Exception:  # a bug must not end the thread: one report, a pause, go on
                    log.exception("mailer loop failed; going on", extra={"stream": self.outbox})
                    self._pending_cursor = "0"
                    halt.wait(REDIS_BACKOFF_S)
                finally:
                    self._close_smtp()  # one connection per batch (a burst), none held while idle
        finally:
            self._close_smtp()

    # -- reading ---------------------------------------------------------------------------------------

    def _next_batch(self) -> list[Entry]:
        if not self._group_ready:
            self._ensure_group()
        if self._pending_cursor is not None:
            entries = self._read(self._pending_cursor, None)
            if entries:
                self._pending_cursor = entries[-1][0]
                return entries
            self._pending_cursor = None
        if time.monotonic() >= self._next_claim:
            entries = self._claim()
            if entries:
                return entries
        # block no longer than until the next reclaim sweep is due (and never 0: that is forever)
        due_ms = int((self._next_claim - time.monotonic()) * 1000)
        return self._read(">", max(1, min(self.block_ms, due_ms)))

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.outbox, self.group, id="0", mkstream=True)
            log.info("mailer group created", extra={"stream": self.outbox, "group": self.group})
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _read(self, cursor: str, block_ms: int | None) -> list[Entry]:
        reply: Any = self.client.xreadgroup(
            self.group, self.consumer, {self.outbox: cursor}, count=READ_COUNT, block=block_ms
        )
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            batches = [batch[0] for batch in reply.values()]
        else:
            batches = [stream[1] for stream in reply]
        return [(_text(raw_id), fields) for batch in batches for raw_id, fields in batch]

    def _claim(self) -> list[Entry]:
        """Entries idle in another (dead) consumer's hands for ``reclaim_idle_s``: XAUTOCLAIM, a sweep at a
        time; a full sweep is repeated every ``reclaim_idle_s / 2``."""
        reply: Any = self.client.xautoclaim(
            self.outbox,
            self.group,
            self.consumer,
            min_idle_time=int(self.reclaim_idle_s * 1000),
            start_id=self._claim_cursor,
            count=READ_COUNT,
        )
        self._claim_cursor = _text(reply[0])
        if self._claim_cursor == "0-0":
            self._next_claim = time.monotonic() + self.reclaim_idle_s / 2
        entries: list[Entry] = []
        for raw_id, fields in reply[1]:
            if raw_id is None:  # Redis 6.2: a claimed entry whose payload is gone, reported without its id
                self._pending_cursor = "0"  # it is in our own pending list now: read there, acknowledged
                continue
            entries.append((_text(raw_id), fields))
        if entries:
            log.info(
                "mailer reclaimed idle outbox entries",
                extra={"stream": self.outbox, "count": len(entries), "first_entry_id": entries[0][0]},
            )
        return entries

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
            self._ack(entry_id)
            return
        fields = {_text(k): _text(v) for k, v in raw.items()}
        kind = fields.get("kind", "")
        extra = {"task_id": fields.get("task_id", ""), "kind": kind, "entry_id": entry_id}
        if entry_id in self._unrecorded:
            self._record(entry_id)
            self._unrecorded.discard(entry_id)
            return
        if self.client.exists(self.receipt_key(entry_id)):
            log.info("outbox entry was mailed before (receipt found); acknowledged", extra=extra)
            self._ack(entry_id)
            return
        try:
            message = render(fields, entry_id, self._sender)
        except Exception as exc:
            log.warning("malformed outbox entry, acknowledged unsent: %s", _brief(exc), extra=extra)
            self._hook(self.failed, kind if kind in KINDS else "unknown")
            self._ack(entry_id)
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
            self._ack(entry_id)
            return
        log.info("notification mailed", extra=extra)
        self._hook(self.sent, kind)
        try:
            self._record(entry_id)
        except redis.RedisError:
            self._unrecorded.add(entry_id)
            raise

    def _send(self, entry_id: str, message: EmailMessage, retrying: Retrying) -> None:
        to = parseaddr(str(message["To"]))[1]
        sender = parseaddr(self._sender)[1] or DEFAULT_FROM
        self._tries = 0
        for attempt in retrying:
            with attempt:
                self._tries += 1
                if not self._renew_lease(entry_id):
                    raise _LeaseLost(entry_id)
                if self._smtp is None:
                    self._smtp = self._connect(self.settings)
                try:
                    self._smtp.send_message(message, from_addr=sender, to_addrs=[to])
                except BaseException:
                    self._drop_smtp()
                    raise

    def _renew_lease(self, entry_id: str) -> bool:
        return bool(self._lease(keys=[self.outbox], args=[self.group, self.consumer, entry_id]))

    def _record(self, entry_id: str) -> None:
        """The receipt and the XACK, in one MULTI: a mailed entry is never acknowledged without one."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.receipt_key(entry_id), f"{self.consumer} {int(time.time())}", ex=RECEIPT_TTL_S)
        pipe.xack(self.outbox, self.group, entry_id)
        pipe.execute()

    def _ack(self, entry_id: str) -> None:
        self.client.xack(self.outbox, self.group, entry_id)

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

    # -- connections -----------------------------------------------------------------------------------

    def _drop_smtp(self) -> None:
        """Forget a connection after an error (its state is unknown): close it without a QUIT."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.close()
            except Exception:  # closing a broken socket: nothing to do
                pass

    def _close_smtp(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except Exception:
                smtp.close()

    def _redis_failed(self, exc: redis.RedisError) -> None:
        now = time.monotonic()
        self._pending_cursor = "0"  # entries read before the error are still ours: take them up again
        if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
            self._group_ready = False  # the group or the stream went away (FLUSHALL, a new Redis)
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
