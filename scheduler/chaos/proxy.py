"""A TCP proxy between the daemons and Redis that misbehaves on request.

Faults: ``reset_all`` (every connection closed with RST), ``refuse`` (the listening socket is closed for a
while: new connections get ECONNREFUSED) and ``hold_then_kill`` (replies from Redis are held back, then
the connection is reset: a command that ran in Redis whose reply never arrives). It runs an asyncio loop
in a daemon thread; the control methods are called from other threads.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    hold: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock: socket.socket | None = writer.get_extra_info("socket")
    if sock is not None:
        try:  # linger 0: close sends RST, the peer sees "connection reset", not a clean EOF
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class FaultyProxy:
    def __init__(self, listen_port: int, upstream_port: int) -> None:
        self.listen_port = listen_port
        self.upstream_port = upstream_port
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="chaos-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self.accepted = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.listen_port}/0"

    def start(self) -> FaultyProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.listen_port, reuse_address=True
        )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            _reset(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.ensure_future(self._pump(reader, up_writer, link, upstream=False)),
            asyncio.ensure_future(self._pump(up_reader, writer, link, upstream=True)),
        ]

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link, upstream: bool
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if upstream and link.hold:
                    continue  # swallowed: the command ran, its reply is never delivered
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._drop(link)

    def _drop(self, link: _Link) -> None:
        if link in self._links:
            self._links.discard(link)
            _reset(link.client)
            _reset(link.upstream)
            for task in link.tasks:
                task.cancel()

    # -- faults, callable from any thread ---------------------------------------------------------

    def reset_all(self) -> int:
        async def go() -> int:
            links = list(self._links)
            for link in links:
                self._drop(link)
            return len(links)

        count: int = self._call(go())
        return count

    def refuse(self, on: bool) -> None:
        async def go() -> None:
            if on and self._server is not None:
                self._server.close()
                self._server = None
            elif not on and self._server is None:
                await self._listen()

        self._call(go())

    def hold(self, on: bool) -> int:
        """Hold (swallow) replies on every current connection; ``reset_all`` ends them later."""

        async def go() -> int:
            for link in self._links:
                link.hold = on
            return len(self._links)

        count: int = self._call(go())
        return count

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for link in list(self._links):
                self._drop(link)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            try:
                self._call(shutdown())
            except Exception:  # best effort at teardown: the loop is stopped and closed below anyway
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()
