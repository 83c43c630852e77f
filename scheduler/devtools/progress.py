"""What the demo shows of each sample task and of the queue, and the ``Tracker`` that reads it back from
Redis through ``scheduler.inspect`` (the keys the Go API and ``stats`` read) and the crawler's calls log."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from scheduler.config.settings import Settings
from scheduler.devtools.samples import Sample
from scheduler.inspect.daemons import Heartbeat, heartbeat_of
from scheduler.inspect.delayed import delayed_retries
from scheduler.inspect.entries import decode_or_none, read_after
from scheduler.inspect.queue import QueueGauges, queue_gauges
from scheduler.inspect.tasks import task_states
from scheduler.taskqueue import keys


@dataclass
class TaskProgress:
    task_id: int
    sample: Sample
    ok: int = 0  # successful crawls: entries of the results stream
    failed: int = 0  # failed crawls: each one was requeued or dead-lettered
    calls: int = 0  # gRPC calls the crawler answered (its calls log): retries inside a crawl show here
    items: int = 0
    new_items: int = 0
    dead_letters: int = 0
    status: str = ""  # task:crawl_status:<id>, as the Go API reads it
    message: str = ""
    next_run_in: float | None = None

    @property
    def crawls(self) -> int:
        return self.ok + self.failed

    @property
    def crawled(self) -> bool:
        return bool(self.status)

    @property
    def as_expected(self) -> bool:
        if self.sample.expect == "dead_letter":
            return self.dead_letters > 0
        return self.ok > 0 and self.status == self.sample.expect


@dataclass
class QueueState:
    length: int = 0
    pending: int = 0
    delayed: int = 0
    dead_letters: int = 0
    busy: int = 0
    workers: int = 0
    circuit: str = "?"


def queue_state(gauges: QueueGauges, beat: Heartbeat | None) -> QueueState:
    """The queue line: the daemon's gauges, and its heartbeat's workers and circuit ("down": none)."""
    return QueueState(
        length=gauges.length or 0,
        pending=gauges.pending or 0,
        delayed=gauges.delayed or 0,
        dead_letters=gauges.dead_letters or 0,
        busy=int(str(beat.get("busy", 0))) if beat else 0,
        workers=int(str(beat.get("workers", 0))) if beat else 0,
        circuit=str(beat.get("circuit", "?")) if beat else "down",
    )


# -- progress, read back from Redis --------------------------------------------------------------------


class Tracker:
    """Reads the daemon's work back from Redis (and the crawler's calls log); ``poll()`` returns events."""

    def __init__(
        self, client: redis.Redis, settings: Settings, chosen: list[Sample], calls_log: Path
    ) -> None:
        self.redis = client
        self.settings = s = settings
        # task ids as sample_specs() numbers them
        self.tasks = {n: TaskProgress(n, sample) for n, sample in enumerate(chosen, start=1)}
        self.queue = QueueState()
        self._calls_log = calls_log
        self._calls_offset = 0
        self._streams = {
            "results": keys.results_stream(s.task_queue_stream),
            "dlq": keys.dlq_stream(s.task_queue_stream),
            "tasks": s.task_queue_stream,
        }
        self._cursors = dict.fromkeys(self._streams, "0-0")
        self._requeues: set[tuple[int, int, str]] = set()

    def poll(self) -> list[tuple[int, str]]:
        self._read_state()
        events = self._read_results() + self._read_requeues() + self._read_dead_letters()
        self._read_calls()
        return events

    def _new_entries(self, name: str) -> list[tuple[str, dict[str, str]]]:
        rows = read_after(self.redis, self._streams[name], self._cursors[name])
        if rows:
            self._cursors[name] = rows[-1][0]
        return rows

    def _read_results(self) -> list[tuple[int, str]]:
        events = []
        for _, entry in self._new_entries("results"):
            task = self.tasks.get(int(entry["task_id"]))
            if task is None:
                continue
            new = len(json.loads(entry.get("new_items") or "[]"))
            task.ok += 1
            task.items += int(entry.get("total_found") or 0)
            task.new_items += new
            found = (
                f"{entry.get('total_found')} items, {new} new" if entry["status"] == "success" else "no items"
            )
            events.append((task.task_id, f"crawl {task.crawls}: {entry['status']} ({found})"))
        return events

    def _read_requeues(self) -> list[tuple[int, str]]:
        """A requeue is parked in the delayed set, then moved into the stream: seen in either, once."""
        payloads = [fields.get(keys.DATA_FIELD, "") for _, fields in self._new_entries("tasks")]
        payloads += [
            parked.payload for parked in delayed_retries(self.redis, self.settings.task_queue_stream)
        ]
        events = []
        for payload in payloads:
            message = decode_or_none(payload)
            task = self.tasks.get(message.task_id) if message else None
            if message is None or task is None or message.retry == 0:
                continue
            key = (message.task_id, message.retry, message.timestamp.isoformat())
            if key not in self._requeues:
                self._requeues.add(key)
                task.failed += 1
                why = f": {task.message}" if task.message else ""
                events.append(
                    (task.task_id, f"crawl {task.crawls} failed{why}; requeued as retry {message.retry}")
                )
        return events

    def _read_dead_letters(self) -> list[tuple[int, str]]:
        events = []
        for _, entry in self._new_entries("dlq"):
            message = decode_or_none(entry.get("payload", ""))
            task = self.tasks.get(message.task_id) if message else None
            if task is None:
                continue
            task.dead_letters += 1
            reason = entry.get("reason", "")
            if reason.startswith(("permanent", "max_retry")):  # not a crash loop: a crawl that failed
                task.failed += 1
            events.append((task.task_id, f"crawl {task.crawls} dead-lettered ({reason})"))
        return events

    def _read_calls(self) -> None:
        with contextlib.suppress(FileNotFoundError), open(self._calls_log, "rb") as log:
            log.seek(self._calls_offset)
            chunk = log.read()
        complete = chunk[: chunk.rfind(b"\n") + 1] if b"\n" in chunk else b""
        self._calls_offset += len(complete)
        for line in complete.splitlines():
            task = self.tasks.get(int(json.loads(line)["task_id"]))
            if task is not None:
                task.calls += 1

    def _read_state(self) -> None:
        s = self.settings
        states = task_states(self.redis, s.task_queue_stream, list(self.tasks))
        now_ms = time.time() * 1000
        for i, state in states.items():
            task = self.tasks[i]
            task.status, task.message = state.status or "", state.message or ""
            due = state.next_run_ms
            task.next_run_in = None if due is None else max(0.0, (due - now_ms) / 1000)
        gauges = queue_gauges(self.redis, s.task_queue_stream, s.task_queue_group)
        self.queue = queue_state(
            gauges, heartbeat_of(self.redis, s.task_queue_stream, s.task_queue_group, s.consumer_name)
        )
