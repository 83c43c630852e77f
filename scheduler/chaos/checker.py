"""The total-queue check (after Jepsen's): every acknowledged submit ended exactly once, within a bound.

Definitions, per task id:

- a *run* is one attempt that reached an end: a crawler call with code OK, a call with a permanent code
  (the daemon dead-letters it at once), or a dead letter for any other reason (``max_retry`` after
  transient failures or hangs, ``max_deliveries``, ``payload_lost``). A transient call the daemon
  retried is part of a run, not a run of its own.
- *lost*: an acknowledged execute of a unique task with no run at all; for a shared task, an
  acknowledged execute with no OK call that started after it and no later stop. Tasks with an entry a
  trim/DEL fault removed before it was read, or that was pending when a DEL removed the stream and its
  group, count as *deleted* (for a shared task, each such execute: by its own entry or a retry's, which
  names the request it carries; or one pending when an XTRIM took its payload, dead-lettered
  ``payload_lost`` later), and with ``appendfsync everysec`` submits
  acknowledged within the fsync window before a Redis kill count as the *AOF loss window*; neither fails.
- *unexpected*: calls for a task id nobody submitted.
- *duplicated*: crawl runs (OK or permanent calls) of a unique task beyond one per acknowledged execute.
  A dead letter of a task that was also crawled is noted, not counted (it is no second crawl).
- *bound*: the runs that an event could legitimately repeat: those of the event's victim (every daemon
  for Redis restarts and outages) in flight during the event or finished within its window before it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from scheduler.chaos.faults import Deleted, Event
from scheduler.chaos.producer import SHARED_BASE, Submit

TRANSIENT = {
    "UNAVAILABLE",
    "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED",
    "UNKNOWN",
    "ABORTED",
    "INTERNAL",
    "CANCELLED",
}
EVERYSEC_WINDOW_S = 2.5


@dataclass
class Call:
    task_id: int
    keyword: str
    code: str
    start: float
    end: float
    port: int | None

    @property
    def is_run(self) -> bool:
        return self.code not in TRANSIENT


def parse_calls(lines: list[str]) -> list[Call]:
    calls = []
    for line in lines:
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError:
            continue  # the last line of a crawler killed mid-write
        peer = str(raw.get("peer", ""))
        port = int(peer.rsplit(":", 1)[1]) if peer.rsplit(":", 1)[-1].isdigit() else None
        start = float(raw["ts"])
        calls.append(
            Call(
                int(raw["task_id"]),
                raw["keyword"],
                raw["code"],
                start,
                start + raw["duration_ms"] / 1000,
                port,
            )
        )
    return calls


@dataclass
class DeadLetter:
    task_id: int | None
    original_id: str
    reason: str
    at: float


def parse_moves(lines: list[str]) -> dict[str, int]:
    """New entry id -> task id of every retry a daemon moved back into the stream (its log lines)."""
    out = {}
    for line in lines:
        if "due retry moved" not in line:
            continue
        try:
            raw = json.loads(line)
        except ValueError:
            continue
        if raw.get("task_id") is not None and raw.get("entry_id"):
            out[str(raw["entry_id"])] = int(raw["task_id"])
    return out


def parse_dead_letters(entries: Any) -> list[DeadLetter]:
    out = []
    for _, fields in entries or []:
        f = {_s(k): _s(v) for k, v in fields.items()}
        try:
            task_id: int | None = int(json.loads(f.get("payload", ""))["task_id"])
        except (ValueError, KeyError, TypeError):
            task_id = None
        try:
            at = datetime.fromisoformat(f.get("failed_at", "").replace("Z", "+00:00")).timestamp()
        except ValueError:
            at = 0.0
        out.append(DeadLetter(task_id, f.get("original_id", ""), f.get("reason", ""), at))
    return out


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass
class Verdict:
    submits: int = 0
    uncertain: int = 0
    crawls: int = 0
    lost: int = 0
    deleted: int = 0
    aof_window: int = 0
    unexpected: int = 0
    duplicated: int = 0
    bound: int = 0
    dead_letters: int = 0
    details: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def check(
    submits: list[Submit],
    calls: list[Call],
    dead: list[DeadLetter],
    events: list[Event],
    port_owner: dict[int, str],
    deleted: Deleted,
    everysec: bool,
    moved: dict[str, int] | None = None,
) -> Verdict:
    v = Verdict()
    acked: dict[int, list[Submit]] = defaultdict(list)
    uncertain: set[int] = set()
    for s in submits:
        (acked[s.task_id].append(s) if s.entry_id else uncertain.add(s.task_id))
    v.submits = sum(len(x) for x in acked.values())
    v.uncertain = sum(1 for s in submits if not s.entry_id)
    runs: dict[int, list[Call]] = defaultdict(list)
    for call in calls:
        if call.is_run:
            runs[call.task_id].append(call)
    v.crawls = sum(len(x) for x in runs.values())
    dl_runs: dict[int, list[DeadLetter]] = defaultdict(list)
    # every entry id a task ever had: its submits, entries seen by a trim/DEL, and the new entries of
    # retries moved back into the stream (the daemons log each move)
    entry_task = {**(moved or {}), **deleted.tasks, **{s.entry_id: s.task_id for s in submits if s.entry_id}}
    for d in dead:
        if d.task_id is None:  # payload_lost: the payload is gone, the entry id tells the task
            d.task_id = entry_task.get(d.original_id)
        if d.task_id is not None:
            v.dead_letters += 1
            if not d.reason.startswith("permanent"):
                dl_runs[d.task_id].append(d)
    known = set(acked) | uncertain
    strays = [c for c in calls if c.task_id not in known]
    v.unexpected = len(strays)
    for c in strays[:20]:
        v.details["unexpected"].append(f"task {c.task_id} {c.code} at {c.start:.3f}")
    # tasks with an entry removed by a trim/DEL before anyone read it: their loss is the fault's
    # (by the task the fault saw in the entry first: after a DEL the recreated stream may give a later
    # submit the same id, in the same millisecond)
    seen = {**entry_task, **deleted.tasks}
    removed = {seen[e] for e in deleted.unread if e in seen}
    # ...and tasks with an entry in progress when a DEL took the stream and its group away (a retry's new
    # entry too): no queue can finish work whose payload and pending list were deleted
    removed |= {seen[e] for e in deleted.pending if e in seen}
    windows = [(e.t0 - EVERYSEC_WINDOW_S, e.t0) for e in events if e.kind == "redis-restart" and everysec]
    gone = _removed_requests(deleted, dead)
    for task_id, mine in sorted(acked.items()):
        if task_id >= SHARED_BASE:
            _check_shared(v, task_id, mine, submits, runs[task_id], gone)
        elif task_id not in uncertain:
            _check_unique(
                v, task_id, mine, runs[task_id], dl_runs[task_id], (removed, deleted.pending), windows
            )
    v.bound = _bound(events, runs, port_owner)
    _note_moves(v, moved or {})
    return v


def _note_moves(v: Verdict, moved: dict[str, int]) -> None:
    """A lost task's note names the entries its retries were moved to (where to look in the logs)."""
    by_task: dict[int, list[str]] = defaultdict(list)
    for entry, task_id in moved.items():
        by_task[task_id].append(entry)
    notes = v.details["lost"]
    for i, note in enumerate(notes):
        words = note.split()
        if len(words) > 1 and words[0] == "task" and words[1].isdigit() and by_task.get(int(words[1])):
            notes[i] = f"{note}; its retries were moved to {', '.join(sorted(by_task[int(words[1])]))}"


def _check_unique(
    v: Verdict,
    task_id: int,
    executes: list[Submit],
    runs: list[Call],
    letters: list[DeadLetter],
    removed_sets: tuple[set[int], set[str]],
    windows: list[tuple[float, float]],
) -> None:
    removed, pending_at_del = removed_sets
    count = len(runs) + len(letters)
    if count == 0:
        first = executes[0]
        if task_id in removed:
            v.deleted += 1
        elif any(low <= first.acked_at <= high for low, high in windows):
            v.aof_window += 1
        else:
            v.lost += 1
            note = " (pending when the stream was deleted)" if first.entry_id in pending_at_del else ""
            v.details["lost"].append(
                f"task {task_id} entry {first.entry_id} submitted at {first.ts:.3f}{note}"
            )
    if runs and letters:
        v.details["ended twice (noted)"].append(
            f"task {task_id}: crawled OK and dead-lettered ({letters[0].reason[:60]})"
        )
    if len(runs) > len(executes):  # crawls only: a dead letter ends a submit but is no crawl
        v.duplicated += len(runs) - len(executes)
        shown = [f"{c.code}@{c.start:.3f}+{c.end - c.start:.2f}s port {c.port}" for c in runs]
        shown += [f"dlq {d.reason[:40]}" for d in letters]
        v.details["duplicated"].append(f"task {task_id}: " + ", ".join(shown))


def _removed_requests(deleted: Deleted, dead: list[DeadLetter]) -> set[tuple[int, str]]:
    """(task id, entry id of the request) of every request whose entry a trim/DEL removed before any
    consumer finished it: unread, pending when a DEL took the group, or pending when an XTRIM took its
    payload (the pending entry stays; the reclaim then finds no payload and dead-letters it). A request is
    named by its first entry: a retry's entry carries it as its origin. The task is the one the fault saw
    in the entry (after a DEL a later submit may get the same entry id)."""
    payload_lost = {d.original_id for d in dead if d.reason.startswith("payload_lost")}
    return {
        (deleted.tasks[e], deleted.origins.get(e, e))
        for e in deleted.unread | deleted.pending | payload_lost
        if e in deleted.tasks
    }


def _check_shared(
    v: Verdict,
    task_id: int,
    mine: list[Submit],
    submits: list[Submit],
    runs: list[Call],
    gone: set[tuple[int, str]],
) -> None:
    stops = [s.ts for s in submits if s.task_id == task_id and s.action == "stop"]  # uncertain stops too
    for s in mine:
        if s.action != "execute" or any(t > s.ts for t in stops):
            continue
        if not any(c.code == "OK" and c.start > s.ts for c in runs):
            if s.entry_id is not None and (task_id, s.entry_id) in gone:
                v.deleted += 1  # the fault removed it before anyone could run it
                continue
            v.lost += 1
            during = [c for c in runs if c.start <= s.ts <= c.end + 0.05]
            why = f" (a crawl started at {during[0].start:.3f} was in flight)" if during else ""
            v.details["lost"].append(
                f"shared task {task_id}: execute {s.entry_id} at {s.ts:.3f} never crawled after it{why}"
            )


def _bound(
    events: list[Event],
    runs: dict[int, list[Call]],
    port_owner: dict[int, str],
) -> int:
    risky = [e for e in events if e.risk]
    at_risk: set[tuple[int, int]] = set()
    for task_id, calls in runs.items():
        if task_id >= SHARED_BASE:
            continue
        for index, c in enumerate(calls):
            owner = port_owner.get(c.port) if c.port is not None else None
            for e in risky:
                mine = e.victim is None or owner is None or owner == e.victim or (c.port in e.ports)
                if mine and c.start <= e.t1 and c.end >= e.t0 - e.window:
                    at_risk.add((task_id, index))
                    break
    return len(at_risk)
