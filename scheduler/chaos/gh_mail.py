"""A real SMTP server for a chaos run, in the harness's process: aiosmtpd on 127.0.0.1 (as the tests'
tests/smtp_sink.py), keeping what the checks need of every message it accepts. aiosmtpd is a dev
dependency: imported when a sink starts, never by the harness's other scenarios."""

from __future__ import annotations

import email
import email.policy
import threading
import time
from dataclasses import dataclass
from typing import Any

from scheduler.devtools.redis_server import free_port


@dataclass(frozen=True)
class Mail:
    message_id: str
    to: str
    subject: str
    peer_port: int  # the sending daemon's local port (one SMTP connection per batch)
    at: float  # when the server accepted it


class MailSink:
    def __init__(self) -> None:
        self.port = 0
        self._mails: list[Mail] = []
        self._lock = threading.Lock()
        self._controller: Any = None

    def start(self) -> MailSink:
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def mails(self) -> list[Mail]:
        with self._lock:
            return list(self._mails)

    def accept(self, raw: bytes, peer: Any) -> None:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        port = int(peer[1]) if isinstance(peer, tuple | list) and len(peer) > 1 else 0
        mail = Mail(str(message["Message-ID"] or ""), str(message["To"] or ""), str(message["Subject"] or ""),
                    port, time.time())  # fmt: skip
        with self._lock:
            self._mails.append(mail)


class _Handler:
    def __init__(self, sink: MailSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.sink.accept(envelope.original_content or envelope.content, session.peer)
        return "250 2.0.0 Message accepted for delivery"
