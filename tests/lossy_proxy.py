"""A TCP proxy in front of a real Redis that can lose replies: a command reaches Redis and runs, and its
reply never reaches the client (the connection dies instead). The fault behind defects that single-fault
tests with a clean connection never see."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class LossyProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._swallow: Callable[[bytes], bool] | None = None  # request bytes → lose this reply?
        self._reply_pattern: bytes | None = None
        self.swallowed = 0
        self._closed = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_reply_to(self, match: Callable[[bytes], bool]) -> None:
        """The next request whose bytes ``match`` is forwarded, its reply dropped, the connection cut."""
        with self._lock:
            self._swallow = match

    def lose_reply_containing(self, pattern: bytes) -> None:
        """The next reply that contains ``pattern`` is dropped and its connection cut."""
        with self._lock:
            self._reply_pattern = pattern

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._socks += [client, upstream]
            state = {"lose": False}
            threading.Thread(target=self._up, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, state), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    if self._swallow is not None and self._swallow(data):
                        self._swallow = None
                        self.swallowed += 1
                        state["lose"] = True
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _down(self, upstream: socket.socket, client: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := upstream.recv(65536):
                with self._lock:
                    if self._reply_pattern is not None and self._reply_pattern in data:
                        self._reply_pattern = None
                        self.swallowed += 1
                        state["lose"] = True
                if state["lose"]:
                    break  # the command ran in Redis; its reply is lost with the connection
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def close(self) -> None:
        self._closed = True
        self._server.close()
        for sock in self._socks:
            _close(sock)


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
