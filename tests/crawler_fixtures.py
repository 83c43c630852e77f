"""Fixtures for the fake crawler: in-process (``crawler_stub``), console script (``crawler_process``)."""

from __future__ import annotations

import selectors
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from crawler_stub import CrawlerStub

STUB_SCRIPT = Path(sys.executable).parent / "goodshunter-crawler-stub"
STARTUP_TIMEOUT_S = 10.0


@pytest.fixture
def crawler_stub() -> Iterator[CrawlerStub]:
    """A fresh fake crawler on a free port, in this process (its ``calls`` are readable directly)."""
    stub = CrawlerStub(port=0).start()
    yield stub
    stub.stop(grace=0)  # cancels calls left hanging by the test instead of waiting for them


@dataclass
class StubProcess:
    process: subprocess.Popen[str]
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _first_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise TimeoutError(f"crawler stub printed nothing within {timeout_s}s")
    return process.stdout.readline()


@pytest.fixture
def crawler_process() -> Iterator[Callable[..., StubProcess]]:
    """Factory: ``crawler_process("--delay-ms", "50")`` runs the console script on a free port."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> StubProcess:
        argv = [str(STUB_SCRIPT), *args]
        if "--port" not in args:
            argv += ["--port", "0"]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(process)
        line = _first_line(process, STARTUP_TIMEOUT_S)
        if not line.startswith("listening on "):
            process.kill()
            _, err = process.communicate(timeout=5)
            raise RuntimeError(f"crawler stub did not start: {line!r} {err!r}")
        return StubProcess(process, int(line.rsplit(":", 1)[1]))

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=5)
