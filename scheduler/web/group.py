"""One status endpoint for a group of daemon processes (``run --processes N``): ``/metrics``,
``/healthz`` and ``/readyz`` on ``app.metrics_host:app.metrics_port``, answered from what each member
serves on its own loopback port (a socket the supervisor made and hands to every start of that member).

- ``/healthz``: live while every member is live, or is being restarted (no process now), or has been
  started less than ``startup_s`` ago and does not answer yet. The supervisor restarts a member that
  dies; what it cannot fix from inside is a member whose read loop is stuck, which that member's own
  ``/healthz`` reports: the group is then not live, so the orchestrator restarts the whole group.
- ``/readyz``: ready while at least one member is ready (one member can work the queue).
- ``/metrics``: the members' families merged by name and labels. Counters and histograms are summed,
  and stay monotonic across a member's restart: the last values scraped from a member's earlier
  processes are carried and added to its new process's (``refresh`` every ``refresh_s`` keeps them
  recent; what a member counted after its last scrape and before it died is lost, never counted
  twice). Gauges are summed (workers, busy workers: the group's totals), except those every daemon
  reports alike or whose sum means nothing: ``MAX_GAUGES`` (the queue's own gauges, the circuit state)
  are the maximum.

Scraping the members over HTTP rather than prometheus_client's multiprocess mode: that mode needs every
gauge of ``scheduler.metrics`` declared with a multiprocess aggregation, a shared writable directory
(one to three 1 MiB files per process per restart, on a pod's 16 MiB ``/tmp``) and its own clean-up of
dead processes' files, and still gives no member's liveness, which only the member itself knows.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

# Every daemon reports the same value of these (the whole queue), or a state: the group's is the max.
MAX_GAUGES = frozenset(
    {
        "goodshunter_redis_queue_length",
        "goodshunter_redis_queue_pending",
        "goodshunter_redis_queue_lag",
        "goodshunter_task_delayed_retries",
        "goodshunter_task_dlq_length",
        "goodshunter_crawler_circuit_state",  # 2 (open) when any member's circuit is open
    }
)
CUMULATIVE = frozenset({"counter", "histogram", "summary"})  # summed, carried across restarts
REQUEST_TIMEOUT_S = 1.5  # per member; members are asked in parallel, inside a 3 s probe timeout
STARTUP_S = 60.0  # a member not answering yet is starting, this long (the pod's startup probe)
REFRESH_S = 5.0
# the group's own series, beside its members' (docs/OPERATIONS.md lists them)
PROCESSES = "goodshunter_supervisor_processes"
RESTARTS = "goodshunter_supervisor_restarts"
SUPERVISOR_SERIES = (PROCESSES, RESTARTS + "_total")

SampleKey = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


@dataclass(frozen=True)
class Member:
    """One daemon process of the group as the supervisor sees it now."""

    name: str  # its consumer name
    port: int  # its loopback status port
    pid: int | None  # its process, None while it is waiting to be restarted
    started: float  # time.monotonic() of its last start
    restarts: int = 0


@dataclass
class _Kept:
    """What the group remembers of one member: its cumulative samples, of the current process and
    carried from the ones before."""

    pid: int | None = None
    last: dict[SampleKey, float] = field(default_factory=dict)
    carried: dict[SampleKey, float] = field(default_factory=dict)


class GroupStatus:
    """The checks and the collector of the group's status server (a ``StatusServer`` serves them)."""

    def __init__(
        self,
        members: Callable[[], Sequence[Member]],
        stopping: Callable[[], bool],
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        startup_s: float = STARTUP_S,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.members = members
        self.stopping = stopping
        self.timeout_s = timeout_s
        self.startup_s = startup_s
        self.refresh_s = refresh_s
        # threads start as needed: one per member asked at once, up to app.processes' limit
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="group-status")
        self._lock = threading.Lock()
        self._kept: dict[str, _Kept] = {}
        self._families: dict[str, tuple[str, str]] = {}  # family name -> (type, help)
        self._family_of: dict[str, str] = {}  # sample name -> family name
        self._closed = threading.Event()
        self._refresher: threading.Thread | None = None

    # -- the checks ---------------------------------------------------------------------------------------

    def live(self) -> tuple[bool, str]:
        if self.stopping():
            return True, "stopping"  # the drain is bounded by app.shutdown_grace, as a daemon's
        members = self.members()
        problems = []
        now = time.monotonic()
        for member, (code, body) in zip(members, self._ask(members, "/healthz"), strict=True):
            if member.pid is None or code == 200:
                continue  # being restarted, or live
            if code is None and now - member.started < self.startup_s:
                continue  # starting: its status server is not up yet
            problems.append(f"{member.name}: {body.strip() or code}")
        if problems:
            return False, "; ".join(problems)
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self.stopping():
            return False, "stopping"
        members = self.members()
        reasons = []
        for member, (code, body) in zip(members, self._ask(members, "/readyz"), strict=True):
            if code == 200:
                return True, "ok"
            if member.pid is None:
                reasons.append(f"{member.name}: restarting")
                continue
            try:
                reason = json.loads(body).get("reason", body) if code else body
            except (ValueError, AttributeError):
                reason = body.strip()
            reasons.append(f"{member.name}: {reason}")
        return False, ("no process ready: " + "; ".join(reasons)) if reasons else "no processes"

    # -- the metrics ----------------------------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return []  # registered without scraping anyone

    def collect(self) -> Iterable[Metric]:
        members = self.members()
        gauges = self.refresh(members)
        with self._lock:
            totals: dict[str, dict[SampleKey, float]] = {}
            for kept in self._kept.values():
                for source in (kept.carried, kept.last):
                    for key, value in source.items():
                        family = self._family_of[key[0]]
                        into = totals.setdefault(family, {})
                        into[key] = into.get(key, 0.0) + value
            for key, values in gauges.items():
                family = self._family_of[key[0]]
                combine = max if family in MAX_GAUGES else sum
                totals.setdefault(family, {})[key] = float(combine(values))
            families = dict(self._families)
        for name, samples in totals.items():
            kind, doc = families[name]
            metric = Metric(name, doc, kind)
            for (sample, labels), value in sorted(samples.items(), key=_sample_order):
                metric.add_sample(sample, dict(labels), value)
            yield metric
        yield from self._own(members)

    def refresh(self, members: Sequence[Member] | None = None) -> dict[SampleKey, list[float]]:
        """Scrape every running member now: keeps its cumulative samples (carrying those of a process
        that was replaced); returns the gauges' values, per sample, one per member that answered."""
        members = self.members() if members is None else members
        answers = self._ask(members, "/metrics")
        now_running = {m.name: m.pid for m in self.members()}  # a member may have been replaced meanwhile
        gauges: dict[SampleKey, list[float]] = {}
        with self._lock:
            for member, (code, body) in zip(members, answers, strict=True):
                kept = self._kept.setdefault(member.name, _Kept())
                if member.pid is not None and member.pid != kept.pid:
                    for key, value in kept.last.items():  # a new process: the old one's counts carry on
                        kept.carried[key] = kept.carried.get(key, 0.0) + value
                    kept.last, kept.pid = {}, member.pid
                if code != 200 or member.pid is None:
                    continue
                if now_running.get(member.name) != member.pid:
                    continue  # replaced while we asked: the answer may be the new process's
                try:
                    families = list(text_string_to_metric_families(body))
                except ValueError as exc:
                    log.warning("metrics of %s unreadable: %s", member.name, exc)
                    continue
                cumulative: dict[SampleKey, float] = {}
                for family in families:
                    self._families.setdefault(family.name, (family.type, family.documentation))
                    for sample in family.samples:
                        if sample.name.endswith("_created"):
                            continue  # a start time: no sum of it means anything
                        key = (sample.name, tuple(sorted(sample.labels.items())))
                        self._family_of.setdefault(sample.name, family.name)
                        if family.type in CUMULATIVE:
                            cumulative[key] = sample.value
                        else:
                            gauges.setdefault(key, []).append(sample.value)
                # never backwards: a slower answer of the same process may come after a newer one
                kept.last = kept.last | {k: max(v, kept.last.get(k, v)) for k, v in cumulative.items()}
        return gauges

    def _own(self, members: Sequence[Member]) -> Iterable[Metric]:
        running = Metric(PROCESSES, "Daemon processes running now.", "gauge")
        running.add_sample(PROCESSES, {}, sum(m.pid is not None for m in members))
        yield running
        restarts = Metric(RESTARTS, "Daemon processes restarted after they exited.", "counter")
        for member in members:
            restarts.add_sample(RESTARTS + "_total", {"consumer": member.name},
                                member.restarts)  # fmt: skip
        yield restarts

    # -- asking the members --------------------------------------------------------------------------------

    def _ask(self, members: Sequence[Member], path: str) -> list[tuple[int | None, str]]:
        """(status, body) of ``path`` from each running member, in parallel; (None, why) for no answer."""
        futures = [
            self._pool.submit(_get, m.port, path, self.timeout_s) if m.pid is not None else None
            for m in members
        ]
        return [f.result() if f is not None else (None, "restarting") for f in futures]

    def start(self) -> GroupStatus:
        """Scrape every ``refresh_s`` in the background, so that a member that dies loses little."""

        def loop() -> None:
            while not self._closed.wait(self.refresh_s):
                try:
                    self.refresh()
                except Exception:
                    log.exception("group status: refresh failed")

        self._refresher = threading.Thread(target=loop, name="group-refresh", daemon=True)
        self._refresher.start()
        return self

    def close(self) -> None:
        self._closed.set()
        if self._refresher is not None:
            self._refresher.join(self.timeout_s + 1)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _get(port: int, path: str, timeout_s: float) -> tuple[int | None, str]:
    """GET on 127.0.0.1 (http.client: no proxy settings can send it elsewhere)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        return reply.status, reply.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        return None, f"no answer ({type(exc).__name__})"
    finally:
        connection.close()


def _sample_order(item: tuple[SampleKey, float]) -> tuple[object, ...]:
    """Samples of one label set together, histogram buckets by bound, then _count and _sum."""
    (name, labels), _ = item
    rest = tuple(pair for pair in labels if pair[0] != "le")
    bound = next((float(v) for k, v in labels if k == "le"), 0.0)
    suffix = 0 if name.endswith("_bucket") else 1 if name.endswith("_count") else 2
    return (rest, suffix, bound, name)
