"""What the demo shows of each sample task and of the queue, as plain values the tracker fills in."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.devtools.samples import Sample
from scheduler.inspect.daemons import Heartbeat
from scheduler.inspect.queue import QueueGauges


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
