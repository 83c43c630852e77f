"""The MySQL pool's checkout against a real MariaDB/MySQL: an idle connection that is dead is replaced, never
handed out, however it died (the server closed it, or the network forgot it without a word)."""

from __future__ import annotations

import dataclasses
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from unittest import mock

import pytest

from scheduler.config.addresses import parse_go_dsn
from scheduler.tasks.mysql_store import MysqlPool, MysqlTaskStore
from tests.mysql.database import Database


class ForgetfulProxy:
    """A TCP hop in front of the server that can forget its connections, as a NAT, a load balancer or a
    firewall does after an idle timeout (or a server host that rebooted): nothing tells the client, whose
    socket stays quiet; its next packet is answered by a reset."""

    def __init__(self, port: int) -> None:
        self.target = port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket, dict[str, bool]]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def forget(self) -> None:
        """Every current connection: the server side goes away, the client hears nothing until it sends."""
        with self._lock:
            for _, upstream, state in self._pairs:
                state["forgotten"] = True
                _shut(upstream)

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for client, upstream, _ in self._pairs:
                _shut(client)
                _shut(upstream)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            state = {"forgotten": False}
            with self._lock:
                self._pairs.append((client, upstream, state))
            threading.Thread(target=self._up, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, state), daemon=True).start()

    @staticmethod
    def _up(client: socket.socket, upstream: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := client.recv(65536):
                if state["forgotten"]:  # no state for this connection any more: a reset
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client.close()
                    return
                upstream.sendall(data)
        except OSError:
            pass

    @staticmethod
    def _down(upstream: socket.socket, client: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        if not state["forgotten"]:
            _shut(client)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


@pytest.fixture
def proxy(mysql_database: Database) -> Iterator[ForgetfulProxy]:
    p = ForgetfulProxy(mysql_database.server.port)
    yield p
    p.close()


def through(db: Database, proxy: ForgetfulProxy, ping_idle_s: float = 1.0) -> MysqlPool:
    target = dataclasses.replace(parse_go_dsn(db.dsn), host="127.0.0.1", port=proxy.port)
    return MysqlPool(target, size=2, ping_idle_s=ping_idle_s)


def wait_readable(pool: MysqlPool, within_s: float = 5.0) -> None:
    """Until the idle connection's socket shows what the server did (the FIN through the proxy's thread)."""
    conn, _ = pool._idle.queue[-1]
    poller = select.poll()
    poller.register(conn._sock, select.POLLIN)
    deadline = time.monotonic() + within_s
    while not poller.poll(50) and time.monotonic() < deadline:
        pass


def test_an_idle_connection_the_network_forgot_is_replaced_not_an_error(
    mysql_database: Database, proxy: ForgetfulProxy
) -> None:
    """The socket of such a connection is quiet (no FIN came): polling it cannot tell. The ping the poll
    replaced made this transparent; without it the first query on each such connection failed (2013): a
    counted retry of the crawl in ``prepare``, a read-loop back-off in ``get_many``, and ``record``'s three
    tries in place could each draw another of them."""
    pool = through(mysql_database, proxy)
    try:
        store = MysqlTaskStore(pool)
        assert store.query("SELECT 1 AS one") == [{"one": 1}]
        proxy.forget()
        time.sleep(pool.ping_idle_s + 0.1)  # idle as long as a middlebox needs to forget it (minutes, really)
        assert store.query("SELECT 1 AS one") == [{"one": 1}]
    finally:
        pool.close()


def test_a_connection_reused_at_once_costs_no_ping(mysql_database: Database, proxy: ForgetfulProxy) -> None:
    """Under load a connection goes back and out again within milliseconds: the poll alone checks it (a
    threshold far above the loop's time, so a stalled machine cannot turn a reuse into an idle one)."""
    pool = through(mysql_database, proxy, ping_idle_s=60.0)
    try:
        with pool.connection() as conn:
            pass
        with mock.patch.object(conn, "ping", wraps=conn.ping) as ping:
            for _ in range(5):
                with pool.connection() as again:
                    assert again is conn
        assert ping.call_count == 0
    finally:
        pool.close()


def test_a_connection_the_server_closed_is_replaced_without_a_ping(
    mysql_database: Database, proxy: ForgetfulProxy
) -> None:
    pool = through(mysql_database, proxy, ping_idle_s=60.0)  # no ping: the poll alone must see it
    try:
        store = MysqlTaskStore(pool)
        [row] = store.query("SELECT CONNECTION_ID() AS id")
        mysql_database.execute(f"KILL {int(row['id'])}")  # wait_timeout, a restart: the server's FIN
        wait_readable(pool)
        assert store.query("SELECT 1 AS one") == [{"one": 1}]
    finally:
        pool.close()
