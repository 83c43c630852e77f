"""The kill -9 of the GoodsHunter scenario (gh_run): random, or aimed between a crawl's last database
write and its ack."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any, Protocol

from scheduler.chaos.cluster import GROUP, STREAM, Daemon
from scheduler.chaos.faults import Event, FaultContext, Injector
from scheduler.chaos.gh_db import GoodsHunterDb
from scheduler.chaos.producer import Recorder
from scheduler.chaos.state import text

AIMED_SHARE = 0.5
SWITCH_S = 0.0002  # the interpreter's thread switch interval while an aimed kill watches


class KillContext(FaultContext, Protocol):
    """What FastKill acts on beyond the other injectors: implemented by gh_run.GoodsHunterRun."""

    db: GoodsHunterDb | None
    recorder: Recorder | None
    aimed: dict[str, str]  # victim -> the crawl an aimed kill was for, until its event is logged

    def note_smtp(self, daemon: Daemon) -> None: ...


class FastKill(Injector):
    """The kill9 fault, every 1 to 3 s: a random daemon at a random moment, or, one time in two, aimed:
    the daemon holding the entry of a crawl whose ``last_run_at`` was just written (seen in the audit
    within a millisecond or two), so before its ack unless the ack was quicker. Where each kill really
    landed is judged afterwards from the evidence (gh_checks), aimed or not. Notes the victim's SMTP
    connections just before each kill."""

    def __init__(self, harness: KillContext, seed: str) -> None:
        super().__init__("kill9", harness, seed)
        self.h: KillContext = harness

    def do_kill9(self) -> None:
        if not self.wait(1.0, 3.0):
            return
        if self.rng.random() < AIMED_SHARE and self.aimed_kill():
            return
        self.kill9(self.victim())

    def aimed_kill(self) -> bool:
        """Watch for a crawl's last write, then SIGKILL its daemon at once: the ports (/proc reads of a few
        ms each) are read before the watch, the SMTP ones not at all (a mail's duplicate is then judged
        by time alone). False when no crawl was recorded within 2 s."""
        ports = {d.name: self.h.ports_of(d) for d in list(self.h.cluster.live.values())}
        switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_S)  # this thread gets the GIL back sooner from the harness's others
        try:
            found = self.writer_of_a_fresh_crawl(2.0)
            if found is None:
                return False
            daemon, note, seen = found
            with self.h.daemon_lock:
                if daemon.expected_exit or not daemon.alive():
                    return False
                daemon.expected_exit = True
                now = time.time()
                self.h.cluster.signal_daemon(daemon, signal.SIGKILL)
        finally:
            sys.setswitchinterval(switch)
        self.h.aimed[daemon.name] = f"{note}, killed {1000 * (now - seen):.1f} ms after its write was seen"
        self.h.log(Event("kill9", now, now, daemon.name, ports.get(daemon.name, frozenset()), risk=True))
        if self.wait(0.0, 2.0):
            self.restart(daemon)
        return True

    def kill9(self, daemon: Daemon | None, restart_after: tuple[float, float] = (0.0, 2.0)) -> None:
        if daemon is not None:
            self.h.note_smtp(daemon)
        super().kill9(daemon, restart_after)

    def writer_of_a_fresh_crawl(self, timeout: float) -> tuple[Daemon, str, float] | None:
        """The live daemon still holding the entry of a crawl recorded from now on (within ``timeout``),
        what it was, and when it was seen."""
        h = self.h
        assert h.db is not None and h.recorder is not None
        seen = max((i for i, _ in h.db.recorded_since(0)), default=0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not h.stop.is_set():
            for audit_id, task in h.db.recorded_since(seen):
                seen, at = audit_id, time.time()
                entry = next((s.entry_id for s in reversed(h.recorder.submits) if s.task_id == task), None)
                if entry is None:
                    continue
                held: Any = h.admin().xpending_range(STREAM, GROUP, entry, entry, 1)
                daemon = h.cluster.live.get(text(held[0]["consumer"])) if held else None
                if daemon is not None and not daemon.expected_exit:
                    return daemon, f"task {task} entry {entry}", at
            time.sleep(0.001)
        return None
