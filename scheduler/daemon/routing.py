"""What the read loop does with a message it read, from its spec and its run-lock verdict: a worker's
(a crawl, or a stop), or an outcome at once (a skip, a duplicate, a deferred re-enable, not ours)."""

from __future__ import annotations

from scheduler.daemon.outcomes import LeavePending, Outcome, Retry, Skip
from scheduler.taskqueue import StreamMessage
from scheduler.tasks.lifecycle import Verdict
from scheduler.tasks.registry import TaskSpec

DEFER_S = 1.0  # a request waiting for the task's previous run to end looks again this often
DEFERRED = Retry(DEFER_S, False, "", "DEFERRED", 0.0)  # no retry counted, no status written


def route(
    msg: StreamMessage, spec: TaskSpec | None, verdict: Verdict | None, owns_status: bool = True
) -> Outcome | None:
    """What the read loop does with a message: None hands it to a worker (a crawl, or a stop). With a
    store that does not let the daemon change statuses (MySQL: the API re-enables a task by writing its
    row), a stopped task is never crawled."""
    if msg.message.action == "stop":
        return None
    if verdict == "gone":
        return LeavePending("no longer pending to this consumer")
    if spec is None:
        return Skip("skipped")
    if spec.status == "stopped":
        if not owns_status or not _restarts(msg, spec):
            return Skip("skipped")
        if verdict in ("duplicate", "behind"):
            # a re-enable behind a run of the stopped task (queued before the stop, or a crawl the stop
            # is cancelling): acked as a duplicate it would be lost; it comes back once that run is over
            return DEFERRED
    if verdict == "behind":
        # a user's request while a run of the task is delivered, maybe crawling since before the request:
        # acked as a duplicate it would go unanswered; it comes back once that run is over, and is
        # 'satisfied' then if that crawl started after the request was made
        return DEFERRED
    if verdict in ("duplicate", "satisfied"):
        return Skip("duplicate")
    return None


def _restarts(msg: StreamMessage, spec: TaskSpec) -> bool:
    """A user's execute made after the task was stopped starts it again (a re-enabled task). One made
    before the stop (a retry keeps its first request's time), or a replayed dead letter of an older
    request, does not. Both times are Redis' clock."""
    task = msg.message
    if task.source != "user_create" or (task.retry and not task.origin):  # a retry of unknown age: no
        return False
    return task.requested_at(msg.id) > spec.status_stamp
