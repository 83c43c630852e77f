"""Every Redis key name and stream default, in one place.

Keys derived from the stream name (dead letters, delayed retries, schedule, results, run markers) share
its hash tag, so on Redis Cluster a stream named ``{goodshunter}:task:queue`` keeps them in one slot. The
per-task status keys are fixed by the Go original and cannot share it; ``complete_batch.lua`` writes them
with the stream's keys, so Redis Cluster needs that step split (open work, docs/ARCHITECTURE.md).
"""

from typing import Final

DEFAULT_STREAM: Final = "goodshunter:task:queue"
DEFAULT_GROUP: Final = "scheduler_group"
DATA_FIELD: Final = "data"

# Go original: status keys written after each crawl, 24 h TTL.
CRAWL_STATUS_KEY: Final = "task:crawl_status:{task_id}"
CRAWL_MESSAGE_KEY: Final = "task:crawl_message:{task_id}"
STATUS_TTL_SECONDS: Final = 24 * 3600

DEFAULT_MAX_ENTRY_BYTES: Final = 64 * 1024
DEFAULT_DLQ_MAXLEN: Final = 100_000
DEFAULT_RESULTS_MAXLEN: Final = 100_000
DEFAULT_STREAM_MAXLEN: Final = 100_000


def dlq_stream(stream: str) -> str:
    return f"{stream}:dlq"


def delayed_set(stream: str) -> str:
    """Sorted set of retries waiting for their back-off delay (score: due time in ms)."""
    return f"{stream}:delayed"


def schedule_set(stream: str) -> str:
    """Sorted set of periodic tasks (member: task id, score: next run in ms)."""
    return f"{stream}:schedule"


def results_stream(stream: str) -> str:
    return f"{stream}:results"


def run_lock_key(stream: str, task_id: int) -> str:
    """The task's run lock: names the one entry (queued, pending, or parked as ``retry:<entry>:<due>``)
    that may crawl the task; collapses duplicate executes. (The key name predates the concept's name.)"""
    return f"{stream}:inflight:{task_id}"


def run_lock_prefix(stream: str) -> str:
    return run_lock_key(stream, 0)[:-1]


def receipt_prefix(stream: str) -> str:
    """``<prefix><entry id>`` = ``<consumer>|<answer>``: how this consumer ended the entry, kept a few
    minutes so that an ending script sent again after a lost reply gives the same answer."""
    return f"{stream}:ended:"


def run_requests_hash(stream: str) -> str:
    """Task id → time (ms, Redis clock) of the latest user request to run it: a stop made before it is stale."""
    return f"{stream}:requested"


def intervals_hash(stream: str) -> str:
    """Periodic tasks' intervals in ms (task id → ms), read by the publisher script."""
    return f"{stream}:intervals"


def last_success_hash(stream: str) -> str:
    """Task id → start (ms) of its last successful crawl: older duplicate requests are already satisfied."""
    return f"{stream}:lastok"


def control_channel(stream: str) -> str:
    """Pub/sub channel on which a stop reaches every daemon at once."""
    return f"{stream}:control"


def seen_items_key(stream: str, task_id: int) -> str:
    """Sorted set: item source id → when last seen (ms), trimmed to the most recently seen
    ``app.seen_items_per_task``. (``:seen:`` was an unbounded set in the previous release.)"""
    return f"{stream}:seen_at:{task_id}"


def heartbeat_key(stream: str, group: str, consumer: str) -> str:
    return f"{stream}:heartbeat:{group}:{consumer}"


def task_spec_key(task_id: int) -> str:
    return f"goodshunter:task:spec:{task_id}"


TASK_INDEX_KEY: Final = "goodshunter:task:ids"


def crawl_status_key(task_id: int) -> str:
    return CRAWL_STATUS_KEY.format(task_id=task_id)


def crawl_message_key(task_id: int) -> str:
    return CRAWL_MESSAGE_KEY.format(task_id=task_id)


def mail_outbox(stream: str) -> str:
    """Stream of notification events (new item, price drop) waiting to be mailed, one entry per event."""
    return f"{stream}:mail"


def dedup_hash(task_id: int) -> str:
    """GoodsHunter's per-task price memory (source id -> last price), as the Go scheduler names it."""
    return f"dedup:{task_id}"


def guest_active_key(user_id: int) -> str:
    """Set by GoodsHunter's API while a guest user is active; a guest's tasks stop once it expires."""
    return f"guest:active:{user_id}"
