"""The demo's child processes: started the way an operator starts them, each in a session of its own.

A Ctrl-C in the terminal then reaches only the demo, which stops its children in order; if the demo
itself is killed (SIGKILL, OOM), Linux' parent-death signal takes them down with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Linux PR_SET_PDEATHSIG: if the demo itself is killed (SIGKILL, OOM), its children follow.
    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))


def spawn(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """``argv`` in a new session, stdin closed, with none of this shell's APP_*/REDIS_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "REDIS_"))}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        argv,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        **kwargs,
    )


def terminate(process: subprocess.Popen[bytes], timeout: float, forced: threading.Event) -> int:
    """SIGTERM, then wait up to ``timeout`` (less if ``forced`` is set); SIGKILL to its whole session."""
    if process.poll() is None:
        process.terminate()
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline and not forced.is_set():
        time.sleep(0.05)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the group is it and anything it forked
    return process.wait()
