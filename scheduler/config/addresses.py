"""Addresses read from settings: ``host:port``, and GoodsHunter's ``mysql.dsn`` in the Go MySQL driver's form."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import parse_qs

from scheduler.config.redaction import MASK

_HOST_PORT: Final = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]@]+):(?P<port>[0-9]{1,5})")


def split_host_port(addr: str) -> tuple[str, int]:
    """``"host:6379"`` or ``"[::1]:6379"`` to (host, port); ValueError if it is neither."""
    match = _HOST_PORT.fullmatch(addr)
    if not match or not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"must be host:port with a port from 1 to 65535, got {addr!r}")
    return match["host"].strip("[]"), int(match["port"])


@dataclasses.dataclass(frozen=True, repr=False)
class MysqlTarget:
    """A Go MySQL driver DSN, read: ``user:pass@tcp(host:port)/dbname?param=value``."""

    user: str
    password: str
    host: str
    port: int
    unix_socket: str | None
    database: str
    params: Mapping[str, str]

    def __repr__(self) -> str:
        return f"MysqlTarget({self.shown()!r})"

    def shown(self) -> str:
        """The DSN without its password, for logs."""
        where = f"unix({self.unix_socket})" if self.unix_socket else f"tcp({self.host}:{self.port})"
        user = f"{self.user}:{MASK}@" if self.password else (f"{self.user}@" if self.user else "")
        return f"{user}{where}/{self.database}"


def parse_go_dsn(dsn: str) -> MysqlTarget:
    """Parse the Go driver's DSN form, as GoodsHunter's ``mysql.dsn`` holds it (the password may hold
    ``@``/``:``: like the Go driver, the last ``/`` ends the address and the last ``@`` before it ends
    the credentials)."""
    slash = dsn.rfind("/")
    if slash < 0:
        raise ValueError("must look like user:password@tcp(host:3306)/dbname (no '/dbname' found)")
    head, tail = dsn[:slash], dsn[slash + 1 :]
    database, _, query = tail.partition("?")
    if not database:
        raise ValueError("names no database: user:password@tcp(host:3306)/dbname")
    at = head.rfind("@")
    creds, address = (head[:at], head[at + 1 :]) if at >= 0 else ("", head)
    user, _, password = creds.partition(":")
    match = re.fullmatch(r"(?:(?P<net>[a-z0-9]+)(?:\((?P<addr>[^)]*)\))?)?", address)
    if match is None:
        raise ValueError("has an address the Go driver would not read (say tcp(host:3306))")
    net, addr = match["net"] or "tcp", match["addr"] or ""
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if params.get("tls", "false").lower() not in ("false", "0", ""):
        raise ValueError(
            "asks for tls, which the scheduler does not speak to MySQL yet (no plaintext fallback)"
        )
    if net == "unix":
        return MysqlTarget(user, password, "localhost", 3306, addr or "/tmp/mysql.sock", database, params)
    if net not in ("tcp", "tcp4", "tcp6"):
        # not echoed: a password holding '@' or '/' may have been read as the network
        raise ValueError("names a network other than tcp or unix (a password with '@' or '/'?)")
    host, port = ("127.0.0.1", 3306) if not addr else (split_host_port(addr) if ":" in addr else (addr, 3306))
    return MysqlTarget(user, password, host, port, None, database, params)
