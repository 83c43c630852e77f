"""``goodshunter-scheduler run --processes N``: the supervisor and its daemon processes, as a user runs
them (console script subprocesses), on a real Redis and the real fake crawler (gRPC, in this process).

N children named ``<name>-<i>`` all crawl; a ``kill -9`` of one is restarted under the same name and
finishes its own pending entries; SIGTERM (or Ctrl-C on the terminal's process group) drains them all
and exits 0 with nothing left running; a second signal forces; the group's ``/metrics`` sums the
children's counters; a child that cannot start stops the group; ``--processes 1`` is the daemon itself.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from crawler_stub import CrawlerStub
from scheduler.devtools.redis_server import RedisServer, free_port
from scheduler.inspect.daemons import parse_heartbeat
from scheduler.taskqueue import keys
from scheduler.tasks.registry import TaskSpec
from tests.e2e.support import (
    FAST_ENV,
    GROUP,
    SCHEDULER,
    STREAM,
    dead_letters,
    pending_count,
    register,
    statuses,
    wait_until,
)

pytestmark = pytest.mark.e2e


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def get(port: int, path: str, accept: str = "") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Accept": accept} if accept else {})
        reply = connection.getresponse()
        return reply.status, reply.read().decode()
    finally:
        connection.close()


@dataclass
class Group:
    """One ``run --processes N`` and what it is made of."""

    process: subprocess.Popen[bytes]
    name: str
    processes: int
    port: int
    log_path: Path
    client: redis.Redis
    redis_url: str

    @property
    def names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.processes)]

    def heartbeat(self, consumer: str) -> dict[str, object] | None:
        return parse_heartbeat(self.client.get(keys.heartbeat_key(STREAM, GROUP, consumer)))

    def pids(self) -> dict[str, int]:
        """Consumer name -> pid of the child that runs it now (from the supervisor's children)."""
        found = {}
        for pid in children_of(self.process.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--consumer" in argv:
                found[argv[argv.index(b"--consumer") + 1].decode()] = pid
        return found

    def wait_started(self) -> dict[str, int]:
        def every_child_started() -> bool:
            assert self.process.poll() is None, self.log()[-3000:]
            pids = self.pids()
            beats = {n: self.heartbeat(n) for n in self.names}
            return set(pids) == set(self.names) and all(
                beat is not None and beat.get("pid") == pids[n] for n, beat in beats.items()
            )

        wait_until(every_child_started, 20, 0.1, what="every child's heartbeat")
        wait_until(lambda: self.log().count('"msg": "daemon started"') >= self.processes, 20, what="started")
        return self.pids()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        code, body = get(self.port, "/metrics")
        assert code == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def supervise(tmp_path: Path, redis_server: RedisServer, r: redis.Redis) -> Iterator[Callable[..., Group]]:
    """Starts ``run --processes N``; at the end kills whatever of it is left (the test checks it is none)."""
    started: list[Group] = []

    def start(
        crawler: str, name: str, processes: int, *args: str, redis_url: str | None = None, **env: str
    ) -> Group:
        port = free_port()
        full_env = {
            **os.environ, **FAST_ENV, "REDIS_URL": redis_url or redis_server.url, "APP_CRAWLER_GRPC_ADDR": crawler,
            "APP_METRICS_HOST": "127.0.0.1", "APP_METRICS_PORT": str(port), **env,
        }  # fmt: skip
        log_path = tmp_path / f"{name}.log"
        with open(log_path, "ab") as log:
            argv = [str(SCHEDULER), "run", "--consumer", name, "--processes", str(processes), *args]
            # its own process group, as a shell's job: a terminal's Ctrl-C is a SIGINT to the group
            process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, process_group=0
            )
        group = Group(process, name, processes, port, log_path, r, redis_url or redis_server.url)
        started.append(group)
        return group

    yield start
    for group in started:
        left = children_of(group.process.pid)
        if group.process.poll() is None:
            group.process.kill()
            group.process.wait(10)
        for pid in left:
            if exists(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def slow_crawler() -> Iterator[CrawlerStub]:
    stub = CrawlerStub(port=0, delay_ms=50).start()
    yield stub
    stub.stop(grace=0)


def receipts(client: redis.Redis, entry_ids: list[str]) -> dict[str, str]:
    """Entry id -> the consumer that ended it (``S:ended:<entry>`` = ``<consumer>|<answer>``)."""
    values = client.mget([keys.receipt_prefix(STREAM) + e for e in entry_ids])
    return {e: v.decode().split("|", 1)[0] for e, v in zip(entry_ids, values, strict=True) if v}


def own_pending(client: redis.Redis, consumer: str) -> list[str]:
    rows = client.xpending_range(STREAM, GROUP, "-", "+", 1000, consumername=consumer)
    return [row["message_id"].decode() for row in rows]


def check(group: Group, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "REDIS_URL": group.redis_url, **env}
    return subprocess.run([str(SCHEDULER), "check"], env=full_env, capture_output=True, text=True, timeout=20)


def assert_all_gone(pids: list[int], within: float = 5) -> None:
    wait_until(lambda: not any(exists(p) for p in pids), within, what="no child left")


# ---------------------------------------------------------------------------------------------------------


def test_n_children_named_crawl_and_the_group_metrics_sum_them_then_sigterm_drains_all(
    r: redis.Redis, slow_crawler: CrawlerStub, supervise: Callable[..., Group]
) -> None:
    group = supervise(slow_crawler.address, "grp", 3, "--workers", "4")
    pids = group.wait_started()
    assert r.get(keys.heartbeat_key(STREAM, GROUP, "grp")) is None  # the supervisor is no consumer
    assert get(group.port, "/healthz") == (200, "ok\n")
    assert get(group.port, "/readyz")[0] == 200
    # `check` with the group's own settings (a container's HEALTHCHECK) checks each of its daemons
    checked = check(group, APP_CONSUMER_NAME="grp", APP_PROCESSES="3")
    assert checked.returncode == 0, checked.stderr
    assert [line.split(" heartbeat")[0] for line in checked.stdout.splitlines()] == [
        "ok: consumer grp-0", "ok: consumer grp-1", "ok: consumer grp-2"
    ]  # fmt: skip

    ids = list(range(1, 61))
    entries = register(r, [TaskSpec(t, f"item {t}") for t in ids])
    wait_until(lambda: set(statuses(r, ids).values()) == {"success"}, 30, 0.1, what="60 crawls")
    ended_by = receipts(r, entries)
    assert len(ended_by) == 60 and set(ended_by.values()) == set(group.names)  # each child crawled some

    # the group's counters are the sums of the children's: every crawler call counted once
    wait_until(lambda: group.metric("goodshunter_tasks_processed_total", status="success") == 60, 10,
               what="the group's success count")  # fmt: skip
    assert len(slow_crawler.calls) == 60
    samples = group.metrics()
    assert samples[("goodshunter_crawler_call_duration_seconds_count", (("code", "OK"),))] == 60
    assert samples[("goodshunter_task_processing_duration_seconds_count", ())] == 60
    assert samples[("goodshunter_worker_pool_size", ())] == 12  # summed: 3 children of 4 workers
    assert samples[("goodshunter_crawler_circuit_state", ())] == 0  # the worst of the three
    assert samples[("goodshunter_supervisor_processes", ())] == 3
    assert not [k for k in samples if k[0].endswith("_created")]
    code, body = get(group.port, "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert code == 200 and body.endswith("# EOF\n") and "goodshunter_tasks_processed_total" in body
    promtool = shutil.which("promtool")
    if promtool is not None:  # CI installs it: names, _total suffixes, help texts as Prometheus advises
        lint = subprocess.run([promtool, "check", "metrics"], input=get(group.port, "/metrics")[1],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        assert (lint.returncode, lint.stdout, lint.stderr) == (0, "", "")

    # SIGTERM while every child has crawls in flight: each drains them, the group exits 0
    slow = list(range(100, 109))
    register(r, [TaskSpec(t, f"slow {t};delay=1500") for t in slow])
    wait_until(lambda: slow_crawler.active_calls == 9, 10, what="nine crawls in flight")
    began = time.monotonic()
    group.process.send_signal(signal.SIGTERM)
    assert group.process.wait(20) == 0
    assert time.monotonic() - began < 10  # within the grace (10 s), not after it
    assert set(statuses(r, slow).values()) == {"success"}  # finished, not cancelled
    assert pending_count(r) == 0
    assert_all_gone(list(pids.values()))
    assert all(group.heartbeat(n) is None for n in group.names)  # each deleted its own at a clean stop
    text = group.log()
    assert "Traceback" not in text and "supervisor stopped" in text
    gone = check(group, APP_CONSUMER_NAME="grp", APP_PROCESSES="3")
    assert gone.returncode == 1 and "no heartbeat from consumer 'grp-0'" in gone.stderr


def test_a_kill_9_of_the_supervisor_drains_its_children(
    r: redis.Redis, slow_crawler: CrawlerStub, supervise: Callable[..., Group]
) -> None:
    group = supervise(slow_crawler.address, "orphan", 2, "--workers", "2")
    pids = group.wait_started()
    register(r, [TaskSpec(t, f"slow {t};delay=1000") for t in (1, 2, 3)])
    wait_until(lambda: slow_crawler.active_calls == 3, 10, what="three crawls in flight")
    group.process.kill()  # nothing forwarded: each child sees its parent gone and stops itself, once
    group.process.wait(10)
    assert_all_gone(list(pids.values()), within=15)
    assert set(statuses(r, [1, 2, 3]).values()) == {"success"}  # drained, not cut off
    assert pending_count(r) == 0


def test_a_kill_9_child_is_restarted_under_its_name_and_finishes_its_own_pending_entries(
    r: redis.Redis, supervise: Callable[..., Group]
) -> None:
    with CrawlerStub(port=0).start() as stub:
        # leases long enough that the sibling does not reclaim them meanwhile: the restart must
        group = supervise(stub.address, "k9", 2, "--workers", "4", APP_LEASE_TIMEOUT="30s")
        pids = group.wait_started()
        ids = list(range(1, 17))
        entries = register(r, [TaskSpec(t, f"item {t};delay=1500") for t in ids])
        wait_until(lambda: len(own_pending(r, "k9-1")) == 4, 10, what="k9-1 holding four entries")
        held = own_pending(r, "k9-1")
        group.metrics()  # one scrape of both children before the kill
        before = group.metric("goodshunter_tasks_processed_total", status="success")

        os.kill(pids["k9-1"], signal.SIGKILL)
        assert get(group.port, "/healthz")[0] == 200  # live while a child is being restarted
        assert get(group.port, "/readyz")[0] == 200  # k9-0 is ready
        wait_until(lambda: group.pids().get("k9-1") not in (None, pids["k9-1"]), 10, what="restarted")
        again = group.pids()["k9-1"]
        wait_until(lambda: (group.heartbeat("k9-1") or {}).get("pid") == again, 10, what="its name claimed")
        assert group.pids()["k9-0"] == pids["k9-0"]  # the other child was left alone

        wait_until(lambda: set(statuses(r, ids).values()) == {"success"}, 30, 0.1, what="16 crawls")
        wait_until(lambda: pending_count(r) == 0, 10, what="nothing pending")
        assert dead_letters(r) == []
        ended_by = receipts(r, entries)
        assert {ended_by[e] for e in held} == {"k9-1"}  # resumed by the restarted k9-1, not reclaimed
        assert all(stub.calls_for(t) for t in ids)  # no task lost

        after = group.metric("goodshunter_tasks_processed_total", status="success")
        assert before <= after <= len(stub.calls)  # the killed child's counts carried, never doubled
        assert group.metric("goodshunter_supervisor_restarts_total", consumer="k9-1") == 1
        assert group.metric("goodshunter_supervisor_restarts_total", consumer="k9-0") == 0
        assert "daemon process k9-1 killed by SIGKILL" in group.log()
        assert "taken over from a dead daemon" in group.log()

        group.process.send_signal(signal.SIGTERM)
        assert group.process.wait(20) == 0
        assert_all_gone([pids["k9-0"], again])


def test_ctrl_c_reaches_each_child_once_and_a_second_signal_forces(
    r: redis.Redis, slow_crawler: CrawlerStub, supervise: Callable[..., Group]
) -> None:
    group = supervise(slow_crawler.address, "cc", 2, "--workers", "2")
    pids = group.wait_started()
    register(r, [TaskSpec(t, f"slow {t};delay=1500") for t in (1, 2, 3, 4)])
    wait_until(lambda: slow_crawler.active_calls == 4, 10, what="four crawls in flight")
    os.killpg(group.process.pid, signal.SIGINT)  # the terminal's Ctrl-C: the whole foreground group
    assert group.process.wait(20) == 0
    # one signal each (a second would have forced them and left the crawls pending)
    assert set(statuses(r, [1, 2, 3, 4]).values()) == {"success"}
    assert pending_count(r) == 0
    assert_all_gone(list(pids.values()))

    forced = supervise(slow_crawler.address, "hang", 2, "--workers", "2")
    pids = forced.wait_started()
    register(r, [TaskSpec(t, f"stuck {t};hang") for t in (11, 12, 13, 14)])
    wait_until(lambda: pending_count(r) == 4 and slow_crawler.active_calls == 4, 10, what="hung crawls")
    began = time.monotonic()
    forced.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "stopping 2 daemon processes" in forced.log(), 5, what="the stop")
    time.sleep(0.5)
    assert forced.process.poll() is None  # draining: the crawls hang
    forced.process.send_signal(signal.SIGTERM)
    assert forced.process.wait(10) == 0
    assert time.monotonic() - began < 6  # forced: well before the 10 s grace
    assert pending_count(r) == 4  # left pending, for the same names to resume
    assert_all_gone(list(pids.values()))


def test_a_child_that_cannot_start_stops_the_group_with_exit_1(
    redis_factory: Callable[..., RedisServer], supervise: Callable[..., Group]
) -> None:
    server = redis_factory(appendonly=False, password="right")
    group = supervise("127.0.0.1:1", "pw", 2, redis_url=f"redis://:wrong@127.0.0.1:{server.port}/0")
    assert group.process.wait(40) == 1
    text = group.log()
    assert "times in a row within 30s of its start: giving up" in text
    assert "refused the password" in text and ":wrong@" not in text
    assert not running_with(b"pw-0") and not running_with(b"pw-1")


def running_with(consumer: bytes) -> list[int]:
    """Processes whose command line names this consumer (after their supervisor is gone)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--consumer" in argv and consumer in argv and exists(int(proc.name)):
            found.append(int(proc.name))
    return found


def test_processes_1_is_the_daemon_itself(
    r: redis.Redis, slow_crawler: CrawlerStub, supervise: Callable[..., Group]
) -> None:
    solo = supervise(slow_crawler.address, "solo", 1)
    wait_until(lambda: solo.heartbeat("solo") is not None, 15, what="the daemon's heartbeat")
    assert (solo.heartbeat("solo") or {}).get("pid") == solo.process.pid
    assert solo.heartbeat("solo-0") is None and children_of(solo.process.pid) == []
    wait_until(lambda: '"msg": "daemon started"' in solo.log(), 10, what="started")
    register(r, [TaskSpec(1, "item 1")])
    wait_until(lambda: statuses(r, [1]) == {1: "success"}, 10, what="a crawl")
    assert get(solo.port, "/healthz") == (200, "ok\n")
    assert "goodshunter_supervisor" not in get(solo.port, "/metrics")[1]
    solo.process.send_signal(signal.SIGTERM)
    assert solo.process.wait(20) == 0
    assert "supervisor" not in solo.log()
