"""The wire-compatible task queue: the Go ``taskqueue`` package of GoodsHunter, in Python."""

from scheduler.taskqueue.consumer import Consumer, PendingSummary, StreamMessage
from scheduler.taskqueue.message import TaskMessage, decode
from scheduler.taskqueue.producer import Producer

__all__ = ["Consumer", "PendingSummary", "Producer", "StreamMessage", "TaskMessage", "decode"]
