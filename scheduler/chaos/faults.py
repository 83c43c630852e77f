"""Fault injectors: one thread each, a random schedule from the run's seed, every action logged as an Event.

An event with ``risk`` set may legitimately duplicate crawls: those of ``victim`` (None: every daemon)
in flight during ``[t0, t1]`` or finished within ``window`` seconds before ``t0`` (their outcome possibly
not yet recorded). The checker turns these into the duplicate bound.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import redis

from scheduler.chaos.cluster import CRAWLER_DEADLINE_S, GROUP, LEASE_TIMEOUT_S, STREAM, Cluster, Daemon
from scheduler.chaos.proxy import FaultyProxy
from scheduler.chaos.state import entry_key, text

FAULTS = (
    "client-kill", "proxy", "pause", "kill9", "sigstop", "sigterm",
    "crawler", "crawler-hang", "redis-restart", "trim", "idle-kill",
)  # fmt: skip
KILL_WINDOW_S = 1.0  # a crawl that ended this long before a kill may not have its outcome recorded yet
OUTAGE_RISK_S = LEASE_TIMEOUT_S / 3  # an outage this long can let a lease run out (renewed every lease/3)


@dataclass
class Event:
    kind: str
    t0: float
    t1: float
    victim: str | None = None
    ports: frozenset[int] = frozenset()
    risk: bool = False
    window: float = KILL_WINDOW_S
    detail: str = ""


@dataclass
class Deleted:
    """Entries removed by a trim/DEL fault before any consumer finished them."""

    unread: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)  # pending when the stream was DEL'd (with its group)
    tasks: dict[str, int] = field(default_factory=dict)  # entry id -> task id of every entry seen removed
    # entry id -> the entry id of the request it carried, for every entry seen removed that was a retry
    # (a deferral or requeue re-adds a request under a new id; its payload's ``origin`` names the first)
    origins: dict[str, str] = field(default_factory=dict)


class Injector(threading.Thread):
    def __init__(self, name: str, harness: FaultContext, seed: str) -> None:
        super().__init__(name=f"chaos-{name}", daemon=True)
        self.fault = name
        self.h = harness
        self.rng = random.Random(f"{seed}:{name}")
        self.errors = 0

    def run(self) -> None:
        action = getattr(self, "do_" + self.fault.replace("-", "_"))
        while not self.h.stop.is_set():
            try:
                action()
            except (redis.RedisError, OSError):
                self.errors += 1
                self.h.stop.wait(0.2)

    def wait(self, low: float, high: float) -> bool:
        """Sleep a random time; False when the run is over."""
        return not self.h.stop.wait(self.rng.uniform(low, high))

    # -- Redis-side faults ----------------------------------------------------------------------

    def do_client_kill(self) -> None:
        if self.wait(0.05, 0.4):
            kind = self.rng.choice(["normal", "pubsub"])
            now = time.time()
            killed = self.h.admin().client_kill_filter(_type=kind, skipme=True)
            self.h.log(Event("client-kill", now, now, detail=f"TYPE {kind}: {killed}"))

    def do_pause(self) -> None:
        if self.wait(1.0, 4.0):
            ms = self.rng.randint(100, 2500)
            now = time.time()
            self.h.admin().client_pause(ms, all=True)
            self.h.log(
                Event("pause", now, now + ms / 1000, risk=ms / 1000 >= OUTAGE_RISK_S, detail=f"{ms}ms")
            )
            self.h.stop.wait(ms / 1000)

    def do_redis_restart(self) -> None:
        if self.wait(5.0, 12.0):
            down = self.rng.uniform(0.3, 2.0)
            t0 = time.time()
            with self.h.redis_lock:
                self.h.cluster.redis.kill()
                time.sleep(down)
                self.h.cluster.redis.restart()
            window = 1.0 if self.h.cluster.appendfsync == "always" else 2.5
            self.h.log(
                Event("redis-restart", t0, time.time(), risk=True, window=window, detail=f"down {down:.2f}s")
            )

    def do_trim(self) -> None:
        if self.wait(3.0, 8.0):
            delete = self.rng.random() < 0.4
            now = time.time()
            pipe = self.h.admin().pipeline(transaction=True)
            pipe.xinfo_groups(STREAM)
            pipe.xpending_range(STREAM, GROUP, "-", "+", 1_000_000)
            pipe.xrange(STREAM, "-", "+")
            pipe.delete(STREAM) if delete else pipe.xtrim(STREAM, maxlen=0, approximate=False)
            groups, pending, entries, _ = pipe.execute(raise_on_error=False)
            if isinstance(entries, Exception):
                return
            last = "0-0"
            if not isinstance(groups, Exception):
                last = next((text(g["last-delivered-id"]) for g in groups if text(g["name"]) == GROUP), "0-0")
            held = set() if isinstance(pending, Exception) else {text(p["message_id"]) for p in pending}
            ids = [text(entry_id) for entry_id, _ in entries]
            for entry_id, fields in entries:
                task, origin = _request_of(fields)
                if task is not None:
                    self.h.deleted.tasks[text(entry_id)] = task
                if origin is not None:
                    self.h.deleted.origins[text(entry_id)] = origin
            unread = {e for e in ids if entry_key(e) > entry_key(last)}
            self.h.deleted.unread |= unread
            if delete:
                self.h.deleted.pending |= held  # every pending entry: the DEL took the group and its list
            what = "DEL" if delete else "XTRIM MAXLEN 0"
            # ends when the transaction ran (a CLIENT PAUSE holds it back; what it removed is as of then)
            self.h.log(
                Event("trim", now, time.time(), detail=f"{what}: {len(ids)} entries, {len(unread)} unread")
            )

    # -- the proxy ------------------------------------------------------------------------------

    def do_proxy(self) -> None:
        proxy = self.h.proxy
        if proxy is None or not self.wait(0.5, 3.0):
            return
        roll, t0 = self.rng.random(), time.time()
        if roll < 0.4:
            self.h.log(Event("proxy-reset", t0, t0, detail=f"{proxy.reset_all()} connections"))
        elif roll < 0.7:
            hold = self.rng.uniform(0.2, 4.0)
            proxy.refuse(True)
            self.h.stop.wait(hold)
            proxy.refuse(False)
            self.h.log(
                Event("proxy-refuse", t0, time.time(), risk=hold >= OUTAGE_RISK_S, detail=f"{hold:.2f}s")
            )
        else:
            hold = self.rng.uniform(0.2, 2.0)
            held = proxy.hold(True)
            self.h.stop.wait(hold)
            proxy.reset_all()
            self.h.log(
                Event(
                    "proxy-hold",
                    t0,
                    time.time(),
                    risk=hold >= OUTAGE_RISK_S,
                    detail=f"{held} held {hold:.2f}s",
                )
            )

    # -- daemons and crawler ----------------------------------------------------------------------

    def victim(self, ready: bool = False) -> Daemon | None:
        """A random live daemon; ``ready``: only one that has written its heartbeat (signal handlers on)."""
        live = sorted(self.h.cluster.live.values(), key=lambda d: d.name)
        if ready:
            live = [d for d in live if self.h.ready(d)]
        return self.rng.choice(live) if live else None

    def restart(self, old: Daemon) -> None:
        same = self.rng.random() < 0.5
        self.h.start_daemon(old.name if same else None)

    def do_kill9(self) -> None:
        if self.wait(3.0, 8.0):
            self.kill9(self.victim())

    def kill9(self, daemon: Daemon | None, restart_after: tuple[float, float] = (0.0, 2.0)) -> None:
        if daemon is None:
            return
        with self.h.daemon_lock:
            if daemon.expected_exit:  # already stopped (or killed) by another injector: not twice
                return
            daemon.expected_exit = True  # killed on purpose: its exit code is no finding
            ports = self.h.ports_of(daemon)
            now = time.time()
            self.h.cluster.signal_daemon(daemon, signal.SIGKILL)
        self.h.log(Event("kill9", now, now, daemon.name, ports, risk=True))
        if self.wait(*restart_after):
            self.restart(daemon)

    def do_sigstop(self) -> None:
        if not self.wait(3.0, 8.0) or (daemon := self.victim(ready=True)) is None:
            return
        long = self.rng.random() < 0.5
        pause = (
            self.rng.uniform(LEASE_TIMEOUT_S + 1, LEASE_TIMEOUT_S + 4) if long else self.rng.uniform(0.3, 1.5)
        )
        ports = self.h.ports_of(daemon)
        t0 = time.time()
        self.h.cluster.signal_daemon(daemon, signal.SIGSTOP)
        time.sleep(pause)  # not the stop event: a stopped daemon must always be continued
        self.h.cluster.signal_daemon(daemon, signal.SIGCONT)
        self.h.log(Event("sigstop", t0, t0, daemon.name, ports, risk=long, detail=f"{pause:.2f}s"))

    def do_sigterm(self) -> None:
        if not self.wait(4.0, 9.0) or (daemon := self.victim(ready=True)) is None:
            return
        t0 = time.time()
        with self.h.daemon_lock:
            if daemon.expected_exit:  # the kill9 injector took it while this one waited for the lock
                return
            code = self.h.cluster.stop_daemon(daemon)
        self.h.log(Event("sigterm", t0, time.time(), daemon.name, detail=f"exit {code}"))
        if code != 0:
            self.h.crash(f"{daemon.name}: SIGTERM exit code {code}")
        if self.wait(0.0, 1.0):
            self.restart(daemon)

    def do_crawler(self) -> None:
        if self.wait(4.0, 10.0):
            down = self.rng.uniform(0.2, 3.0)
            t0 = time.time()
            self.h.cluster.crawler.kill()
            time.sleep(down)
            self.h.cluster.crawler.start()
            self.h.log(Event("crawler-restart", t0, time.time(), detail=f"down {down:.2f}s"))

    def do_crawler_hang(self) -> None:
        """The crawler stops answering without closing anything (SIGSTOP): calls hang until their
        deadline, entries read ahead wait behind them and are given back, the circuit opens. A call the
        crawler takes up after SIGCONT may run although its caller gave up: a legitimate repeat."""
        if self.wait(3.0, 8.0) and (process := self.h.cluster.crawler.process) is not None:
            hang = self.rng.uniform(1.2, 4.0)
            t0 = time.time()
            process.send_signal(signal.SIGSTOP)
            time.sleep(hang)  # not the stop event: a stopped crawler must always be continued
            process.send_signal(signal.SIGCONT)
            self.h.log(Event("crawler-hang", t0, time.time() + CRAWLER_DEADLINE_S, risk=True,
                             detail=f"hung {hang:.2f}s"))  # fmt: skip

    def do_idle_kill(self) -> None:
        if not self.wait(1.0, 3.0) or not self.h.idle():
            return
        task_id = self.h.next_idle_task()
        self.h.submit(task_id)
        time.sleep(self.rng.uniform(0.0, 0.02))
        self.kill9(self.victim(), (0.0, 0.5))


def _request_of(fields: dict[bytes, bytes] | None) -> tuple[int | None, str | None]:
    """An entry's task id and, for a retry, the entry id of the request it carries (its ``origin``)."""
    try:
        data = json.loads((fields or {})[b"data"])
        task = int(data["task_id"])
    except (KeyError, ValueError, TypeError):
        return None, None
    origin = data.get("origin")  # data is a dict: data["task_id"] above raised TypeError for anything else
    return task, origin if isinstance(origin, str) and origin else None


class FaultContext(Protocol):
    """What the injectors act on; implemented by the runner."""

    cluster: Cluster
    proxy: FaultyProxy | None
    stop: threading.Event
    deleted: Deleted
    redis_lock: threading.Lock
    daemon_lock: threading.Lock

    def admin(self) -> redis.Redis: ...
    def log(self, event: Event) -> None: ...
    def crash(self, what: str) -> None: ...
    def start_daemon(self, name: str | None) -> Daemon: ...
    def ports_of(self, daemon: Daemon) -> frozenset[int]: ...
    def idle(self) -> bool: ...
    def ready(self, daemon: Daemon) -> bool: ...
    def next_idle_task(self) -> int: ...
    def submit(self, task_id: int) -> object: ...
