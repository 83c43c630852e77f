"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 and a free port, keeping every message it accepts.

    with SmtpSink() as sink:
        ...send to 127.0.0.1:sink.port...
        assert sink.wait(1)
        sink.messages[0]["Subject"]

``refuse`` (settable at any time) makes it answer DATA with that reply instead, e.g. ``"451 4.3.0 Try
again later"`` (transient) or ``"554 5.7.1 Rejected"`` (permanent); ``attempts`` counts every DATA, refused
or not. By default the server offers neither STARTTLS nor AUTH; ``tls=SmtpSink.self_signed(dir)`` makes
it offer STARTTLS with a certificate for 127.0.0.1 (trust it with ``SSL_CERT_FILE=<cert>``), and
``auth=(user, password)`` makes it offer AUTH (after STARTTLS only) and require it for mail.
"""

from __future__ import annotations

import email
import email.policy
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from scheduler.devtools.redis_server import free_port


@dataclass(frozen=True)
class Received:
    """One accepted message with its envelope and the client's address (one per SMTP connection)."""

    message: EmailMessage
    mail_from: str
    rcpt_tos: tuple[str, ...]
    peer: tuple[str, int]
    tls: bool  # the message came over a STARTTLS-upgraded connection
    login: str | None  # the AUTH user name, when the client logged in


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return self.sink._data(session, envelope)


class SmtpSink:
    def __init__(
        self,
        *,
        refuse: str | None = None,
        tls: tuple[Path, Path] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.refuse = refuse
        self.tls = tls
        self.auth = auth
        self.received: list[Received] = []
        self.attempts = 0
        self.port = 0
        self._cond = threading.Condition()
        self._controller: Controller | None = None

    def start(self) -> SmtpSink:
        self.port = free_port()
        options: dict[str, Any] = {}
        if self.tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self.tls)
            options["tls_context"] = context
        if self.auth:
            options.update(authenticator=self._authenticate, auth_required=True)
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, **options)
        self._controller.start()
        return self

    @staticmethod
    def self_signed(directory: Path) -> tuple[Path, Path]:
        """A certificate and key for 127.0.0.1 (openssl CLI), valid for a day: ``(cert, key)``."""
        cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
        return cert, key

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and self.auth is not None
        ok = ok and (data.login.decode(), data.password.decode()) == self.auth
        return AuthResult(success=ok, auth_data=data.login.decode() if ok else None)

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def messages(self) -> list[EmailMessage]:
        with self._cond:
            return [r.message for r in self.received]

    def wait(self, n: int, timeout: float = 5.0) -> bool:
        """True once at least ``n`` messages were accepted; False after ``timeout`` seconds."""
        return self._wait(lambda: len(self.received) >= n, timeout)

    def wait_attempts(self, n: int, timeout: float = 5.0) -> bool:
        """True once at least ``n`` DATA commands arrived, accepted or refused."""
        return self._wait(lambda: self.attempts >= n, timeout)

    def _wait(self, done: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _data(self, session: Any, envelope: Any) -> str:
        with self._cond:
            self.attempts += 1
            self._cond.notify_all()
            if self.refuse:
                return self.refuse
            raw = envelope.original_content or envelope.content
            message = email.message_from_bytes(raw, policy=email.policy.default)
            peer = session.peer
            self.received.append(
                Received(
                    message,
                    envelope.mail_from,
                    tuple(envelope.rcpt_tos),
                    (peer[0], peer[1]),
                    tls=session.ssl is not None,
                    login=session.auth_data if session.authenticated else None,
                )
            )
            self._cond.notify_all()
        return "250 2.0.0 Message accepted for delivery"
