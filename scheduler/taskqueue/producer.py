"""Producer: puts task messages on the stream, one XADD (one round-trip) per message."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis

from scheduler.taskqueue import keys
from scheduler.taskqueue._redis import bytes_client, connection_errors, text
from scheduler.taskqueue.message import TaskMessage

log = logging.getLogger(__name__)


class Producer:
    """The Go ``taskqueue.Producer``: ``submit_task`` / ``stop_task`` write one entry with one ``data`` field.

    No MAXLEN on XADD: the Go original's ``MAXLEN 100000`` silently drops a backlog larger than that;
    here the stream is trimmed by the consumers, below what every group has acknowledged.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        logger: logging.Logger | None = None,
        stream: str = keys.DEFAULT_STREAM,
    ) -> None:
        self.redis = bytes_client(redis_client)
        self.log = logger or log
        self.stream = stream

    def submit_task(self, task_id: int, source: str = "unknown") -> str:
        """Enqueue an ``execute`` for task_id; returns the new entry id. task_id 0 is rejected."""
        return self.publish(TaskMessage.new(task_id, "execute", source))

    def stop_task(self, task_id: int, source: str = "system") -> str:
        return self.publish(TaskMessage.new(task_id, "stop", source))

    def publish(self, message: TaskMessage) -> str:
        with connection_errors(f"XADD {self.stream}"):
            entry_id = self.redis.xadd(self.stream, {keys.DATA_FIELD: message.encode()})
        self.log.debug(
            "task enqueued",
            extra={"task_id": message.task_id, "action": message.action, "entry_id": entry_id},
        )
        return text(entry_id)

    def submit_many(
        self, task_ids: Iterable[int], source: str = "unknown", action: str = "execute"
    ) -> list[str]:
        """Bulk enqueue in one pipelined round-trip; every id is validated before anything is sent."""
        messages = [TaskMessage.new(task_id, action, source) for task_id in task_ids]  # type: ignore[arg-type]
        if not messages:
            return []
        with connection_errors(f"XADD {self.stream} (pipeline)"):
            pipe = self.redis.pipeline(transaction=False)
            for message in messages:
                pipe.xadd(self.stream, {keys.DATA_FIELD: message.encode()})
            return [text(entry_id) for entry_id in pipe.execute()]
