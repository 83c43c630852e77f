"""With ``app.task_store = mysql`` the API's running rows are the periodic schedule: every sync adds the
tasks that started running and removes those stopped, completed or deleted. An added task is due a
period after it last ran or, never run, after it was created (the API's own execute makes the first
run), and at once when that is past: after a long outage every overdue task runs, once. The periodic publisher then runs on the Redis schedule as
for the embedded registry, so any number of daemons publish each task once per period.

Safe with several daemons syncing at once: adds are ZADD NX; removals are of tasks this sync saw scheduled
before it read the rows, so a task another sync added meanwhile stays. A stale add (a row stopped between
one daemon's read and its write) costs one execute, skipped when read. Two windows remain, each costing a
wait until the next sync (≤ 30 s; a re-enable's own execute runs the task meanwhile): a removal on a row
read as stopped after another sync re-added the task, and a task a stop unscheduled and the API restarted
between this sync's two reads (in the schedule read, running in the row read: neither added nor removed)."""

from __future__ import annotations

import logging

import redis

from scheduler.taskqueue import keys
from scheduler.taskqueue._redis import connection_errors
from scheduler.tasks.mysql_store import MysqlTaskStore

log = logging.getLogger(__name__)


def sync_schedule(
    store: MysqlTaskStore, client: redis.Redis, stream: str, interval_s: float
) -> tuple[int, int]:
    """Make the schedule hold exactly the running rows. Returns (added, removed).

    The schedule is read before the rows: a task another daemon's sync added after this read is not in
    ``scheduled``, so a row snapshot older than that sync never removes it."""
    schedule, intervals = keys.schedule_set(stream), keys.intervals_hash(stream)
    with connection_errors("sync the schedule with the task database"):
        members: list[bytes] = client.zrange(schedule, 0, -1)  # type: ignore[assignment]
    scheduled = {int(t) for t in members}
    rows = dict(store.running())
    running = set(rows)
    with connection_errors("sync the schedule with the task database"):
        added, removed = sorted(running - scheduled), sorted(scheduled - running)
        if not (added or removed):
            return 0, 0
        now_ms = int(client.time()[0]) * 1000
        pipe = client.pipeline(transaction=False)
        for i in range(0, len(added), 1000):
            chunk = added[i : i + 1000]
            pipe.hset(intervals, mapping={str(t): int(interval_s * 1000) for t in chunk})
            due = {str(t): max(now_ms, int((rows[t] + interval_s) * 1000)) for t in chunk}
            pipe.zadd(schedule, due, nx=True)
        for i in range(0, len(removed), 1000):
            chunk = removed[i : i + 1000]
            pipe.zrem(schedule, *chunk)
            pipe.hdel(intervals, *[str(t) for t in chunk])
        pipe.execute()
    if added or removed:
        log.info("schedule synced with the task database: %d added, %d removed", len(added), len(removed))
    return len(added), len(removed)
