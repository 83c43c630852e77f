"""What a process shows: resident memory and TCP connections (from /proc), tracebacks in its log."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path


def rss_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        pass
    return inodes


def tcp_ports_to(pid: int, remote_port: int) -> frozenset[int]:
    """Local ports of ``pid``'s TCP connections whose remote port is ``remote_port`` (IPv4 and IPv6)."""
    inodes = _socket_inodes(pid)
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[9] not in inodes:
                continue
            local, remote = cols[1], cols[2]
            if int(remote.rsplit(":", 1)[1], 16) == remote_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return frozenset(ports)


_RAW_TRACEBACK = re.compile(
    r"^Traceback \(most recent call last\):\n(?:.*\n){0,200}?([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b.*)$",
    re.MULTILINE,
)


def crash_findings(log_text: str) -> list[str]:
    """One line per distinct traceback in a daemon's log: ``msg: Exception: text`` for a JSON record
    with one, the exception line for a raw one (printed to stderr)."""
    found: dict[str, None] = {}
    for line in log_text.splitlines():
        if "Traceback" in line and line.startswith("{"):
            try:
                record = json.loads(line)
                exc = str(record.get("exc", "")).strip().splitlines()
                found[f"{record.get('msg', '')}: {exc[-1] if exc else ''}"] = None
            except ValueError:
                found[line.strip()] = None
    for match in _RAW_TRACEBACK.finditer(log_text):
        found[f"traceback: {match.group(1).strip()}"] = None
    return list(found)
