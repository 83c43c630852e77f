"""One hierarchy for every error the scheduler raises, so callers catch by category."""


class SchedulerError(Exception):
    """Base of every error raised by this package."""


class ConfigError(SchedulerError):
    """A setting is missing or invalid; the message names the key."""


class InvalidMessageError(SchedulerError):
    """A stream entry is not a valid task message (a poison message).

    ``reason`` is a short machine-friendly code (``bad_json``, ``task_id_range``...), ``detail`` the
    human explanation. Both are safe to log: they never contain the payload itself.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class InvalidTaskError(SchedulerError, ValueError):
    """A caller asked for something impossible (task id 0, an unknown action...)."""


class QueueConnectionError(SchedulerError):
    """Redis could not be reached, or the connection broke mid-command."""


class CrawlerError(SchedulerError):
    """A crawler call failed; ``code`` is the gRPC status name, ``transient`` whether a retry may help."""

    def __init__(self, code: str, detail: str, *, transient: bool) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.transient = transient


class CrawlCancelledError(SchedulerError):
    """The crawl was cancelled because its task was stopped (not a failure; not retried)."""
