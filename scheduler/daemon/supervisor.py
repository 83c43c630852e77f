"""``run --processes N`` (``app.processes``): N daemon processes under one supervisor, this process, so
that one host's daemons use more than one core (a daemon's crawls share one interpreter lock).

- **Started** as fresh ``python -m scheduler run --processes 1 --consumer <name>-<i>`` processes, never
  forked from this one: each makes its own gRPC channel and Redis connections after it starts.
- **Named** ``<name>-0`` … ``<name>-(N-1)``, ``<name>`` being ``app.consumer_name`` (default: the host
  name): distinct, so no two share a pending list, and stable, so a restarted child resumes its own
  pending entries. Its start-up name claim (``startup.judge``) takes a dead child's name over at once:
  the dead child's pid is a zombie or gone (or belongs to a process with another start time).
- **Restarted** when one exits while the group runs: at once after a run of at least ``STABLE_S``, then
  after 1, 2, 4 … ``MAX_BACKOFF_S`` seconds for each further quick exit in a row. ``GIVE_UP_AFTER``
  quick exits in a row of one child stop the group with exit 1: a child that cannot start (a refused
  password, its name held by a live daemon elsewhere) needs an operator, not a restart loop (systemd's
  start limit and a pod's crash-loop back-off then take over).
- **Stopped** by SIGTERM/SIGINT (``scheduler.signals``): the first is sent on to every child as
  SIGTERM, and each drains within ``app.shutdown_grace`` as a lone daemon does; a second is sent on as
  well, which forces them. A child still running ``shutdown_grace + AFTER_GRACE_S`` after the first
  signal (the bound a lone daemon keeps, from which the manifests' kill timeouts are derived) is killed.
  Exit 0 when every child drained and exited 0. Children run in process groups of their own, so a
  terminal's Ctrl-C reaches them once, through the supervisor, not twice (which would force them). Each
  child watches its parent and sends itself one SIGTERM when the supervisor is gone, so even a ``kill
  -9`` of the supervisor drains them rather than leaving them behind. (Not ``PR_SET_PDEATHSIG``: the
  kernel sends that again each time the child is handed to another exiting thread of the supervisor,
  and a second SIGTERM forces the daemon.)
- **Status**: one server on ``app.metrics_host:app.metrics_port`` for the group (``web.group``). Each
  child serves its own on a loopback socket that the supervisor bound and keeps, and hands to every
  start of that child (``pass_fds``): its port is known without asking, never changes across restarts,
  and cannot be taken by anyone else meanwhile. Children run with ``APP_METRICS_PORT=0``.

What else one daemon has per process follows its consumer name: heartbeat key, Redis client names, the
mailer's consumer. All children log to the supervisor's stdout/stderr (one whole line per write).

(Just over 300 lines, a third of it this explanation: a child's life, from start to restart to stop, is
one state machine, kept whole; the group's status server is ``web.group``.)
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from scheduler.config.settings import AFTER_GRACE_S, Settings
from scheduler.signals import Signals
from scheduler.web.group import GroupStatus, Member
from scheduler.web.status import StatusServer

log = logging.getLogger(__name__)

PARENT_ENV = "GOODSHUNTER_SUPERVISOR_PID"  # set for a child: its supervisor's pid
STATUS_FD_ENV = "GOODSHUNTER_STATUS_FD"  # set for a child: the listening socket to serve its status on
STABLE_S = 30.0  # a child that ran this long and exits is restarted at once
MAX_BACKOFF_S = 30.0
GIVE_UP_AFTER = 5  # quick exits in a row of one child
POLL_S = 0.1
PARENT_POLL_S = 0.5  # how often a child looks whether its supervisor is still there


# -- the child's side -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildSide:
    status_socket: socket.socket | None  # where to serve /metrics, /healthz, /readyz
    orphaned: bool  # the supervisor was gone before this child started


def child_side() -> ChildSide | None:
    """In a child of a supervisor (None otherwise): its status socket, and a watch that stops this
    daemon (one SIGTERM: a drain) when the supervisor is gone. The variables are consumed: nothing this
    process starts inherits them."""
    parent = os.environ.pop(PARENT_ENV, None)
    fd = os.environ.pop(STATUS_FD_ENV, None)
    if not parent:
        return None
    sock = socket.socket(fileno=int(fd)) if fd else None
    if os.getppid() != int(parent):
        return ChildSide(sock, orphaned=True)
    threading.Thread(target=_watch_parent, args=(int(parent),), name="supervisor-watch", daemon=True).start()
    return ChildSide(sock, orphaned=False)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:  # once gone, this process belongs to init or a subreaper
        time.sleep(PARENT_POLL_S)
    log.warning("the supervisor (pid %d) is gone: stopping this daemon", parent)
    os.kill(os.getpid(), signal.SIGTERM)


# -- the supervisor -----------------------------------------------------------------------------------------


@dataclass
class _Child:
    name: str
    sock: socket.socket | None = None
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_exits: int = 0
    restart_at: float | None = None
    restarts: int = 0

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1]) if self.sock is not None else 0

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def member(self) -> Member:
        pid = self.process.pid if self.process is not None and self.running() else None
        return Member(self.name, self.port, pid, self.started, self.restarts)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited {code}"


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        child_args: Sequence[str] = (),
        *,
        executable: str = sys.executable,
    ) -> None:
        """``child_args``: what each child's ``run`` gets beyond ``--processes 1 --consumer NAME`` (the
        supervisor's own ``--config``, ``--workers``, ``--log-format``)."""
        self.settings = settings
        self.child_args = list(child_args)
        self.executable = executable
        self._children = [_Child(name) for name in settings.consumer_names()]
        self._lock = threading.Lock()  # the status threads read the children the main thread changes
        self._signals = Signals(self._on_signal)
        self.gave_up = False

    def members(self) -> list[Member]:
        with self._lock:
            return [c.member() for c in self._children]

    def run(self) -> int:
        """Start the children, keep them running until a signal (or giving up), stop them. Exit code."""
        s = self.settings
        self._signals.install()
        group: GroupStatus | None = None
        http: StatusServer | None = None
        try:
            if s.metrics_port:
                for child in self._children:
                    child.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
                group = GroupStatus(self.members, self._signals.stop.is_set).start()
                registry = CollectorRegistry(auto_describe=False)
                registry.register(group)
                http = StatusServer(s.metrics_host, s.metrics_port, live=group.live, ready=group.ready,
                                    registry=registry).start_or_warn()  # fmt: skip
            for child in self._children:
                self._start(child)
            log.info(
                "supervisor started",
                extra={
                    "processes": len(self._children),
                    "consumers": [c.name for c in self._children],
                    "status_ports": [c.port for c in self._children] if s.metrics_port else None,
                    "pids": [c.process.pid for c in self._children if c.process is not None],
                },
            )
            while not self._signals.stop.is_set() and not self.gave_up:
                self._tend()
                self._signals.stop.wait(POLL_S)
            return self._stop()
        finally:
            self._kill_left()  # after an unforeseen error only: a normal stop leaves nothing running
            if http is not None:
                http.stop()
            if group is not None:
                group.close()
            for child in self._children:
                if child.sock is not None:
                    child.sock.close()
            self._signals.restore()

    def _on_signal(self, name: str, forced: bool) -> None:
        what = "forcing the daemon processes" if forced else "stopping the daemon processes (again to force)"
        log.warning("signal %s: %s", name, what)

    # -- starting and restarting -------------------------------------------------------------------------------

    def _start(self, child: _Child) -> None:
        argv = [self.executable, "-m", "scheduler", "run", "--processes", "1", "--consumer", child.name,
                *self.child_args]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "APP_PROCESSES"}
        env |= {"APP_METRICS_PORT": "0", "PROMETHEUS_DISABLE_CREATED_SERIES": "True",
                PARENT_ENV: str(os.getpid())}  # fmt: skip
        fds: tuple[int, ...] = ()
        if child.sock is not None:
            env[STATUS_FD_ENV] = str(child.sock.fileno())
            fds = (child.sock.fileno(),)
        now = time.monotonic()
        try:
            process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, pass_fds=fds, process_group=0)
        except OSError as exc:
            log.error("daemon process %s could not be started: %s", child.name, exc)
            with self._lock:
                child.started = now
            self._exited(child, 127, now)
            return
        with self._lock:
            child.process, child.started, child.restart_at = process, now, None

    def _tend(self) -> None:
        now = time.monotonic()
        for child in self._children:
            if child.process is not None:
                code = child.process.poll()
                if code is not None:
                    self._exited(child, code, now)
            elif child.restart_at is not None and now >= child.restart_at and not self.gave_up:
                with self._lock:
                    child.restarts += 1
                self._start(child)

    def _exited(self, child: _Child, code: int, now: float) -> None:
        ran = now - child.started
        pid = child.process.pid if child.process is not None else None
        with self._lock:
            child.process = None
            child.quick_exits = child.quick_exits + 1 if ran < STABLE_S else 1
        how = describe_exit(code)
        if child.quick_exits >= GIVE_UP_AFTER:
            log.error(
                "daemon process %s %s, %d times in a row within %.0fs of its start: giving up, stopping the "
                "others; its own log lines say why",
                child.name, how, child.quick_exits, STABLE_S,
                extra={"consumer": child.name, "pid": pid, "code": code},
            )  # fmt: skip
            self.gave_up = True
            return
        delay = 0.0 if child.quick_exits <= 1 else min(MAX_BACKOFF_S, 2.0 ** (child.quick_exits - 2))
        child.restart_at = now + delay
        log.warning(
            "daemon process %s %s after %.1fs; restarting it under the same name %s",
            child.name, how, ran, f"in {delay:.0f}s" if delay else "now",
            extra={"consumer": child.name, "pid": pid, "code": code},
        )  # fmt: skip

    # -- stopping ----------------------------------------------------------------------------------------------

    def _stop(self) -> int:
        grace = self.settings.shutdown_grace
        deadline = time.monotonic() + grace + AFTER_GRACE_S
        for child in self._children:  # one that died just now is not restarted, nor part of the drain
            if child.process is not None and child.process.poll() is not None:
                log.warning("daemon process %s %s", child.name, describe_exit(child.process.returncode))
                with self._lock:
                    child.process = None
        stopping = [c for c in self._children if c.process is not None]
        log.info("stopping %d daemon processes (grace %.0fs)", len(stopping), grace)
        self._send(stopping, signal.SIGTERM)
        forced = False
        while alive := [c for c in stopping if c.running()]:
            if self._signals.forced.is_set() and not forced:
                forced = True
                self._send(alive, signal.SIGTERM)  # their second signal: crawls cancelled, left pending
            if time.monotonic() >= deadline:
                log.error(
                    "%d daemon processes still running %.0fs after the stop: killed (%s)",
                    len(alive), grace + AFTER_GRACE_S, ", ".join(c.name for c in alive),
                )  # fmt: skip
                self._send(alive, signal.SIGKILL)
                for child in alive:
                    if child.process is not None:
                        child.process.wait(5)
                break
            time.sleep(POLL_S)
        clean = not self.gave_up
        for child in stopping:
            assert child.process is not None
            code = child.process.returncode
            # SIGTERM's default action: a child stopped before it installed its handlers did no work yet
            if code not in (0, -signal.SIGTERM):
                clean = False
                log.warning("daemon process %s %s during the stop", child.name, describe_exit(code))
        log.info("supervisor stopped", extra={"clean": clean})
        return 0 if clean else 1

    def _send(self, children: Sequence[_Child], signum: signal.Signals) -> None:
        for child in children:
            if child.process is not None:
                child.process.send_signal(signum)  # a no-op for a process already reaped

    def _kill_left(self) -> None:
        left = [c for c in self._children if c.running()]
        self._send(left, signal.SIGKILL)
        for child in left:
            if child.process is not None:
                child.process.wait(5)
