"""Subprocesses of a benchmark run, and what /proc says about them (CPU seconds, peak RSS).

Every process is started in its own session so that it and whatever it forks (Dramatiq's and RQ's worker
processes, taskiq's child) are one process group, stopped together by that group's id. A program may put its
children in process groups of their own (our supervisor does, so that a terminal's Ctrl-C reaches it
alone): pausing, resuming and killing therefore also signal every process of the tree, whatever its group.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
LISTENING = re.compile(r"listening on (\S+)")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces; everything after its closing parenthesis is numeric
    return raw[raw.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """``root`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(root: int) -> float:
    """User + system CPU of the process tree, reaped children included (RQ's work horses end up there)."""
    total = 0
    for pid in tree(root):
        fields = _stat(pid)
        if fields:  # utime, stime, cutime, cstime are fields 14-17 of stat; 12-15 after the name
            total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def signal_tree(root: int, sig: int) -> None:
    """``sig`` to ``root``'s process group and to every process of its tree outside that group, twice over
    the tree: a process forked while the first pass ran is caught by the second."""
    try:
        os.killpg(root, sig)
    except ProcessLookupError:
        return
    for _ in range(2):
        for pid in tree(root):
            try:
                if os.getpgid(pid) != root:
                    os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _status_mib(root: int, name: str) -> list[float]:
    """``name`` (VmHWM, VmRSS...) of each live process of the tree, in MiB."""
    sizes = []
    for pid in tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(rf"^{name}:\s+(\d+) kB", status, re.MULTILINE)
        if match:
            sizes.append(int(match.group(1)) / 1024)
    return sizes


def peak_rss(root: int) -> tuple[float, float, int]:
    """(sum over the tree, largest single process, processes) of VmHWM, in MiB."""
    peaks = _status_mib(root, "VmHWM")
    return sum(peaks), max(peaks, default=0.0), len(peaks)


def rss_now(root: int) -> float:
    """VmRSS (resident now, not the peak) summed over the tree, in MiB."""
    return sum(_status_mib(root, "VmRSS"))


class PssSampler:
    """Peak of the tree's summed PSS (shared pages split between the processes sharing them), sampled:
    the kernel keeps a peak RSS per process (VmHWM) but none for a group of forked processes."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        self.root = root
        self.interval = interval
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss sampler", daemon=True)

    def start(self) -> PssSampler:
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(2.0)
        return self.peak_mib

    def _run(self) -> None:
        while True:
            self.peak_mib = max(self.peak_mib, pss(self.root))
            if self._stop.wait(self.interval):
                return


def pss(root: int) -> float:
    total = 0
    for pid in tree(root):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        match = re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)
        total += int(match.group(1)) if match else 0
    return total / 1024


@dataclass
class Proc:
    """A started subprocess with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, grace: float = 1.0) -> None:
        """SIGTERM to the group, SIGKILL to what is left after ``grace`` seconds (nothing here needs a
        graceful shutdown: every stage is thrown away). Descendants in other process groups, noted before the
        SIGTERM, get a SIGKILL too if they outlive the group."""
        strays = [pid for pid in tree(self.pid) if _pgid(pid) not in (self.pid, None)]
        self._stop_group(grace)
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _stop_group(self, grace: float) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if self.popen.poll() is not None and not _group_alive(self.pid):
                return
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.popen.poll() is not None and not _group_alive(self.pid):
                    return
                time.sleep(0.05)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def start(name: str, argv: list[str], env: Mapping[str, str], workdir: Path) -> Proc:
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, popen, log)


def start_crawler(workdir: Path, items: int, timeout: float = 20.0) -> tuple[Proc, str]:
    """The fake crawler as its own process (its gRPC server does not share a GIL with anyone)."""
    proc = start(
        "crawler",
        [sys.executable, "-m", "crawler_stub", "--port", "0", "--delay-ms", "0", "--items", str(items)],
        {},
        workdir,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = LISTENING.search(proc.log.read_text(errors="replace"))
        if match:
            return proc, match.group(1)
        if not proc.alive():
            break
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"fake crawler did not start:\n{proc.tail()}")
