"""One signal helper for every program (the daemon, the demo, the fake crawler), in uvicorn's style: the
handlers only record; the first SIGTERM/SIGINT asks to stop, a second forces; the previous handlers come
back when the program is done with them (tests and embedding code run several in one process)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType

DEFAULT = (signal.SIGINT, signal.SIGTERM)


class Signals:
    def __init__(
        self,
        on_signal: Callable[[str, bool], None] | None = None,
        signals: Iterable[signal.Signals] = DEFAULT,
    ) -> None:
        """``on_signal(name, forced)`` runs in the handler: it may only set events or log."""
        self.stop = threading.Event()
        self.forced = threading.Event()
        self.received: list[str] = []
        self._on_signal = on_signal
        self._signals = tuple(signals)
        self._previous: dict[signal.Signals, object] = {}

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        forced = self.stop.is_set()
        self.received.append(name)
        if forced:
            self.forced.set()
        self.stop.set()
        if self._on_signal is not None:
            self._on_signal(name, forced)

    def install(self) -> Callable[[], None]:
        """Install the handlers; returns the function that puts the previous ones back."""
        self._previous = {sig: signal.signal(sig, self) for sig in self._signals}
        return self.restore

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous = {}

    def __enter__(self) -> Signals:
        self.install()
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.restore()
