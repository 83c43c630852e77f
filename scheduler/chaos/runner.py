"""One scenario, start to end: servers, daemons, producer and faults, then quiescence and the checks.

(Over 300 lines: one scenario's whole life, start to verdict, reads best as one sequence; its parts
(cluster, faults, producer, checker) are their own modules.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from scheduler.chaos import state
from scheduler.chaos.checker import Call, check, parse_calls, parse_dead_letters, parse_moves
from scheduler.chaos.cluster import GROUP, LEASE_TIMEOUT_S, STREAM, Cluster, Daemon
from scheduler.chaos.faults import FAULTS, Deleted, Event, Injector
from scheduler.chaos.procinfo import crash_findings, rss_kib, tcp_ports_to
from scheduler.chaos.producer import Feeder, Recorder, Submit, make_workload
from scheduler.chaos.proxy import FaultyProxy
from scheduler.chaos.report import Row
from scheduler.devtools.redis_server import free_port
from scheduler.taskqueue import keys
from scheduler.tasks.registry import RedisTaskRegistry, TaskSpec

IDLE_BASE = 8_000_000
MIXED = ("client-kill", "proxy", "pause", "kill9", "sigstop", "sigterm", "crawler", "redis-restart", "trim")
SCENARIOS: dict[str, tuple[str, ...]] = {
    **{name: (name,) for name in FAULTS},
    "redis-restart-everysec": ("redis-restart",),
    "backlog": ("backlog",),
    "mixed": MIXED,
    "mysql-kill9": ("mysql", "kill9"),  # app.task_store = mysql, kill -9 every 1-3 s (gh_run)
    "none": (),  # no fault: the baseline (shared tasks' stops and re-enables still run)
}


@dataclass
class Options:
    seconds: float = 20.0
    daemons: int = 3
    workers: int = 8
    delay_ms: int = 100
    rate: float = 15.0  # unique tasks submitted per second
    shared: int = 5
    backlog: int = 5000
    keep: bool = False
    quiet: bool = False


class Run:
    def __init__(
        self, scenario: str, faults: tuple[str, ...], seed: str, opts: Options, command: str
    ) -> None:
        self.scenario, self.faults, self.seed, self.opts = scenario, faults, seed, opts
        self.row = Row(scenario, seed, command)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"chaos-{scenario}-"))
        everysec = scenario.endswith("everysec")
        delay = 5 if "backlog" in faults else opts.delay_ms
        self.cluster = Cluster(
            self.tmp, opts.daemons, opts.workers, delay, "everysec" if everysec else "always"
        )
        self.proxy: FaultyProxy | None = None
        self.stop = threading.Event()
        self.deleted = Deleted()
        self.redis_lock, self.daemon_lock, self._lock = threading.Lock(), threading.Lock(), threading.Lock()
        self.events: list[Event] = []
        self.crashes: list[str] = []
        self.port_owner: dict[int, str] = {}
        self.rss_first: dict[str, int] = {}
        self.rss_last: dict[str, int] = {}
        self._idle_next = IDLE_BASE
        self._admin: redis.Redis | None = None
        self.recorder: Recorder | None = None
        self._sampler_done = threading.Event()

    # -- FaultContext ---------------------------------------------------------------------------

    def admin(self) -> redis.Redis:
        if self._admin is None:
            self._admin = self.cluster.redis.client(socket_timeout=3, retry=Retry(NoBackoff(), 0))
        return self._admin

    def log(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)
        if not self.opts.quiet and event.kind != "client-kill":
            print(f"  [{self.scenario}] {event.kind} {event.victim or ''} {event.detail}", flush=True)

    def crash(self, what: str) -> None:
        with self._lock:
            self.crashes.append(what)

    def start_daemon(self, name: str | None) -> Daemon:
        """A restart; a name another injector has just restarted gets a new name instead (two daemons on
        one name are refused by the daemon itself, which is right, and no crash)."""
        with self.daemon_lock:
            live = self.cluster.live.get(name) if name else None
            return self.cluster.start_daemon(None if live and live.alive() else name, wait=False)

    def ports_of(self, daemon: Daemon) -> frozenset[int]:
        ports = tcp_ports_to(daemon.pid, self.cluster.crawler.port)
        for port in ports:
            self.port_owner[port] = daemon.name
        return ports

    def idle(self) -> bool:
        return state.is_idle(self.admin())

    def ready(self, daemon: Daemon) -> bool:
        """Alive and has written a heartbeat since it started (a restart under the same name finds the
        old process's key still there): its signal handlers are installed."""
        try:
            raw = self.admin().get(keys.heartbeat_key(STREAM, GROUP, daemon.name))
            return daemon.alive() and raw is not None and float(json.loads(raw)["ts"]) > daemon.started_at
        except (redis.RedisError, ValueError, KeyError, TypeError):
            return False

    def next_idle_task(self) -> int:
        self._idle_next += 1
        RedisTaskRegistry(self.admin()).put_many([TaskSpec(self._idle_next, f"idle {self._idle_next}")])
        return self._idle_next

    def submit(self, task_id: int) -> Submit:
        assert self.recorder is not None
        return self.recorder.submit(task_id)

    # -- the run ----------------------------------------------------------------------------------

    def _sample(self) -> None:
        while not self._sampler_done.wait(0.5):
            for daemon in list(self.cluster.live.values()):
                rss = rss_kib(daemon.pid)
                if rss is not None:
                    self.rss_first.setdefault(daemon.name, rss)
                    self.rss_last[daemon.name] = rss
                try:
                    self.ports_of(daemon)
                except OSError:
                    pass

    def execute(self) -> Row:
        started = time.monotonic()
        try:
            self._execute()
        except KeyboardInterrupt:  # Ctrl-C: the finally below kills every process; the caller stops
            self.row.error = "interrupted"
        except Exception as exc:  # a broken run is a row with an error, not a crash
            self.row.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.stop.set()
            self._sampler_done.set()
            self.cluster.close()
            if self.proxy is not None:
                self.proxy.close()
            if self.recorder is not None:
                self.recorder.close()
            self.row.seconds = round(time.monotonic() - started, 1)
            if self.opts.keep or not self.row.ok:
                self.row.details.setdefault("data", []).append(str(self.tmp))
                # the verdict beside the evidence: a replay under real timing need not fail the same way
                with contextlib.suppress(OSError):
                    (self.tmp / "verdict.json").write_text(
                        json.dumps(dataclasses.asdict(self.row), indent=1, default=str), encoding="utf-8"
                    )
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        return self.row

    def _execute(self) -> None:
        opts, rng = self.opts, random.Random(f"{self.seed}:{self.scenario}:workload")
        self.cluster.start_servers()
        if "proxy" in self.faults:
            self.proxy = FaultyProxy(free_port(), self.cluster.redis.port).start()
            self.cluster.redis_url_for_daemons = self.proxy.url
        backlog = "backlog" in self.faults
        rate = opts.rate / 10 if "idle-kill" in self.faults else opts.rate  # idle moments to kill in
        unique = opts.backlog if backlog else max(1, int(rate * opts.seconds))
        work = make_workload(rng, unique, 0 if backlog else opts.shared, "crawler" in self.faults)
        self.recorder = Recorder(self.cluster.redis.port)
        self.recorder.register(work)
        if backlog:
            self.recorder.submit_bulk(list(range(1, unique + 1)))
        for _ in range(opts.daemons):
            self.cluster.start_daemon()
        sampler = threading.Thread(target=self._sample, name="chaos-sampler", daemon=True)
        sampler.start()
        feeder = Feeder(
            self.recorder, work, 0.0 if backlog else opts.seconds, rng, skip=unique if backlog else 0
        )
        injectors = [Injector(f, self, self.seed) for f in self.faults if f in FAULTS]
        feeder.start()
        for injector in injectors:
            injector.start()
        if backlog:
            self._drain_with_kills(unique, Injector("kill9", self, self.seed))
        feeder.join()
        self.stop.set()
        for injector in injectors:
            injector.join(30)
        self._restore()
        self._settle(sampler)

    def _drain_with_kills(self, total: int, killer: Injector) -> None:
        for fraction in (0.3, 0.65):
            deadline = time.monotonic() + 600
            while self._runs_so_far() < total * fraction and time.monotonic() < deadline:
                time.sleep(0.2)
            killer.kill9(killer.victim(), (0.5, 1.5))
        deadline = time.monotonic() + max(120.0, total / 100)
        while time.monotonic() < deadline and not state.quiet_idle(self.admin()):
            time.sleep(0.5)

    def _runs_so_far(self) -> int:
        path = self.cluster.crawler.calls_log
        return path.read_bytes().count(b"\n") if path.exists() else 0

    def _restore(self) -> None:
        """Undo every fault still in effect; bring the daemon count back to the configured one."""
        for daemon in list(self.cluster.live.values()):
            self.cluster.signal_daemon(daemon, signal.SIGCONT)
        if self.proxy is not None:
            self.proxy.hold(False)
            self.proxy.refuse(False)
        if self.cluster.crawler.process is None or self.cluster.crawler.process.poll() is not None:
            self.cluster.crawler.start()
        if self.cluster.redis.process is None or self.cluster.redis.process.poll() is not None:
            self.cluster.redis.restart()
        try:
            self.admin().client_unpause()
        except redis.RedisError:
            pass
        while len(self.cluster.live) < self.opts.daemons:
            self.cluster.start_daemon()

    def _settle(self, sampler: threading.Thread) -> None:
        assert self.recorder is not None
        row = self.row
        if not state.wait_idle(self.admin(), 90.0):
            row.details.setdefault("stuck", []).append(
                "the queue never became idle within 90 s after the faults"
            )
        row.pending = state.pending(self.admin())
        markers = state.run_markers(self.admin())
        for key, value in list(markers.items())[:20]:
            row.details.setdefault("stuck", []).append(f"run marker left at rest: {key} = {value}")
        ids = sorted({s.task_id for s in self.recorder.submits})
        rng = random.Random(f"{self.seed}:{self.scenario}:again")
        sample = ids if len(ids) <= 2000 else sorted(rng.sample(ids, 2000))
        row.stuck = len(markers) + self._again(sample)
        state.wait_idle(self.admin(), 30.0)
        row.pending = max(row.pending, state.pending(self.admin()))
        self._sampler_done.set()
        sampler.join(5)
        row.rss_start_mib = max(self.rss_first.values(), default=0) / 1024
        row.rss_end_mib = (
            max((self.rss_last[n] for n in self.cluster.live if n in self.rss_last), default=0) / 1024
        )
        for daemon in list(self.cluster.live.values()):
            code = self.cluster.stop_daemon(daemon)
            if code != 0:
                self.crash(f"{daemon.name}: final SIGTERM exit code {code}")
        self._collect()

    def _again(self, task_ids: list[int]) -> int:
        """One more execute each, after the faults: every one must be crawled within lease + a few s."""
        assert self.recorder is not None
        RedisTaskRegistry(self.admin()).put_many([TaskSpec(t, f"again {t}") for t in task_ids])
        since = time.time()
        self.recorder.producer.submit_many(task_ids, "user_create")
        capacity = self.opts.daemons * self.opts.workers
        timeout = LEASE_TIMEOUT_S + 5 + 3 * len(task_ids) * self.cluster.delay_ms / 1000 / capacity
        deadline, missing = time.monotonic() + timeout, set(task_ids)
        while missing and time.monotonic() < deadline:
            time.sleep(0.25)
            done = {
                c.task_id
                for c in self._calls()
                if c.keyword.startswith("again") and c.code == "OK" and c.start > since
            }
            missing -= done
        for task_id in sorted(missing)[:20]:
            self.row.details.setdefault("stuck", []).append(
                f"task {task_id} not crawled within {timeout:.1f}s of a new execute"
            )
        return len(missing)

    def _calls(self) -> list[Call]:
        path = self.cluster.crawler.calls_log
        return parse_calls(path.read_text(errors="replace").splitlines()) if path.exists() else []

    def _collect(self) -> None:
        assert self.recorder is not None
        row = self.row
        calls = [c for c in self._calls() if not c.keyword.startswith("again")]
        dead = parse_dead_letters(self.admin().xrange(keys.dlq_stream(STREAM)) or [])
        everysec = self.cluster.appendfsync == "everysec"
        moved: dict[str, int] = {}
        for path in {d.log_path for d in self.cluster.all_daemons if d.log_path.exists()}:
            moved.update(parse_moves(path.read_text(errors="replace").splitlines()))
        v = check(
            self.recorder.submits, calls, dead, self.events, self.port_owner, self.deleted, everysec, moved
        )
        row.submits, row.uncertain, row.crawls, row.lost = v.submits, v.uncertain, v.crawls, v.lost
        row.deleted, row.aof_window, row.unexpected = v.deleted, v.aof_window, v.unexpected
        row.duplicated, row.bound, row.dead_letters = v.duplicated, v.bound, v.dead_letters
        for kind, lines in v.details.items():
            row.details.setdefault(kind, []).extend(lines)
        scanned: set[Path] = set()
        for daemon in self.cluster.all_daemons:
            code = daemon.process.returncode
            if code not in (0, None) and not daemon.expected_exit:
                self.crash(f"{daemon.name}: exit code {code}")
            if daemon.log_path in scanned:  # a name restarted shares its log file
                continue
            scanned.add(daemon.log_path)
            text = daemon.log_path.read_text(errors="replace") if daemon.log_path.exists() else ""
            for what in crash_findings(text):
                self.crash(f"{daemon.name}: {what[:300]}")
        row.crashes = len(self.crashes)
        row.details.setdefault("crash", []).extend(self.crashes)
        for e in self.events:
            row.events[e.kind] = row.events.get(e.kind, 0) + 1
        row.details = {k: v for k, v in row.details.items() if v}
        self._dump()

    def _dump(self) -> None:
        """The run's record beside its logs: submits and events as JSON lines, and what the trim/DEL faults
        removed (kept when a run fails)."""
        assert self.recorder is not None
        with open(self.tmp / "submits.jsonl", "w") as out:
            out.writelines(json.dumps(dataclasses.asdict(s)) + "\n" for s in self.recorder.submits)
        with open(self.tmp / "events.jsonl", "w") as out:
            for e in self.events:
                out.write(json.dumps({**dataclasses.asdict(e), "ports": sorted(e.ports)}) + "\n")
        removed = dataclasses.asdict(self.deleted)
        removed = {k: sorted(v, key=state.entry_key) if isinstance(v, set) else v for k, v in removed.items()}
        (self.tmp / "deleted.json").write_text(json.dumps(removed, indent=1), encoding="utf-8")
