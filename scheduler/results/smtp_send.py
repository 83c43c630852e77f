"""SMTP sending: ``MailSettings`` (where and how), ``smtp_connect`` (one TLS, logged-in connection),
``SmtpConnection`` (the one connection a mailer holds for a batch of sends) and ``transient`` (which
failures are worth another try)."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Final

SMTP_TIMEOUT_S: Final = 10.0  # smtplib's timeout: each blocking step of a connection
IMPLICIT_TLS_PORT: Final = 465


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


class SmtpConnection:
    """At most one open connection, made on the first send: one per batch (a burst), none held while
    idle. A failed send drops it."""

    def __init__(self, settings: MailSettings, connect: Connect | None = None) -> None:
        self.settings = settings
        self._connect: Connect = connect or smtp_connect
        self._smtp: smtplib.SMTP | None = None

    def send(self, message: EmailMessage, from_addr: str, to_addr: str) -> None:
        if self._smtp is None:
            self._smtp = self._connect(self.settings)
        try:
            self._smtp.send_message(message, from_addr=from_addr, to_addrs=[to_addr])
        except BaseException:
            self._drop()
            raise

    def _drop(self) -> None:
        """Forget a connection after an error (its state is unknown): close it without a QUIT."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.close()
            except Exception:  # closing a broken socket: nothing to do
                pass

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except Exception:
                smtp.close()


def transient(exc: BaseException) -> bool:
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
