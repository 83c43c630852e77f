"""The task registry: each monitoring task's search spec, read by the daemon to build a FetchRequest.

Specs live in Redis, one hash per task plus an index set, behind the small ``TaskRegistry`` protocol so a
SQL store can replace it later without touching the daemon.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Final, Literal, Protocol, get_args

import redis

from scheduler.errors import InvalidTaskError
from scheduler.taskqueue import keys
from scheduler.taskqueue._redis import connection_errors, text
from scheduler.taskqueue.message import check_task_id

Platform = Literal["mercari", "yahoo_auction"]
SortBy = Literal["created_time", "price", "score", "num_likes"]
SortOrder = Literal["desc", "asc"]
Status = Literal["running", "stopped"]

log = logging.getLogger(__name__)

MAX_KEYWORD_LEN: Final = 200
MAX_PRICE: Final = 2**31 - 1


@dataclass(frozen=True, slots=True)
class TaskSpec:
    task_id: int
    keyword: str
    platform: Platform = "mercari"
    min_price: int = 0
    max_price: int = 0
    exclude_keywords: tuple[str, ...] = ()
    only_on_sale: bool = True
    limit: int = 0
    sort: SortBy = "created_time"
    order: SortOrder = "desc"
    status: Status = "running"
    interval_s: float | None = None  # None: the daemon's schedule_interval
    updated_at: float = field(default_factory=time.time)
    # when the request that set the status was made, on Redis' clock, as a stamp (ms * 1000 + entry seq,
    # or Redis TIME in µs; 0: not set yet): orders stops and re-enables by when they were made
    status_at: int = 0

    def __post_init__(self) -> None:
        check_task_id(self.task_id)
        _check(bool(self.keyword.strip()) and len(self.keyword) <= MAX_KEYWORD_LEN, "keyword", self.keyword)
        _check_choice("platform", self.platform, _PLATFORMS)
        _check_choice("sort", self.sort, _SORTS)
        _check_choice("order", self.order, _ORDERS)
        _check_choice("status", self.status, _STATUSES)
        for name in ("min_price", "max_price", "limit"):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_PRICE,
                name,
                value,
            )
        _check(not self.max_price or self.min_price <= self.max_price, "max_price", self.max_price)
        _check(self.interval_s is None or self.interval_s >= 1.0, "interval", self.interval_s)

    def to_hash(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in asdict(self).items():
            if name == "task_id" or value is None:
                continue
            if name == "exclude_keywords":
                out[name] = "\x1f".join(value)
            elif isinstance(value, bool):
                out[name] = "1" if value else "0"
            else:
                out[name] = str(value)
        return out

    @classmethod
    def from_hash(
        cls, task_id: int, raw: Mapping[bytes, bytes] | Mapping[bytes | str, bytes | str]
    ) -> TaskSpec:
        """The spec of a registry hash. Parsed specs are kept by content (a periodic task's hash is read
        every run and rarely changes; a spec is immutable): the same task and fields give the same spec
        without parsing and checking it again. A hash without ``updated_at`` is parsed every time (its
        default is the time of parsing)."""
        key = (task_id, tuple(raw.items()))
        spec = _PARSED.get(key) if type(task_id) is int else None  # True == 1: never task 1's spec
        if spec is None:
            spec = cls._parse(task_id, raw)
            # kept: hashes with an updated_at, of a bounded size (a long exclusion list is parsed each time)
            if (b"updated_at" in raw or "updated_at" in raw) and sum(map(len, raw.values())) <= _PARSED_BYTES:
                if len(_PARSED) >= _PARSED_MAX:
                    _PARSED.clear()  # bounded; refilled by the next reads
                _PARSED[key] = spec
        return spec

    @classmethod
    def _parse(cls, task_id: int, raw: Mapping[bytes, bytes] | Mapping[bytes | str, bytes | str]) -> TaskSpec:
        kwargs: dict[str, Any] = {}
        for k, v in raw.items():
            name = text(k)
            if name in _FIELD_NAMES:
                kwargs[name] = text(v)
        for name in ("min_price", "max_price", "limit"):
            if name in kwargs:
                kwargs[name] = int(kwargs[name])
        if "status_at" in kwargs:
            kwargs["status_at"] = int(float(kwargs["status_at"]))
        for name in ("interval_s", "updated_at"):
            if name in kwargs:
                kwargs[name] = float(kwargs[name])
        if "only_on_sale" in kwargs:
            kwargs["only_on_sale"] = kwargs["only_on_sale"] == "1"
        raw_excludes = kwargs.pop("exclude_keywords", "")
        kwargs["exclude_keywords"] = tuple(w for w in raw_excludes.split("\x1f") if w)
        return cls(task_id=task_id, **kwargs)

    @property
    def status_stamp(self) -> int:
        """When the current status was requested, as a stamp (see ``status_stamp``)."""
        return status_stamp(self.status_at, self.updated_at)

    def with_status(self, status: Status) -> TaskSpec:
        return replace(self, status=status, updated_at=time.time())


_FIELD_NAMES: Final = frozenset(f.name for f in fields(TaskSpec))
_PLATFORMS: Final = get_args(Platform)
_SORTS: Final = get_args(SortBy)
_ORDERS: Final = get_args(SortOrder)
_STATUSES: Final = get_args(Status)
_PARSED: dict[tuple[int, tuple[Any, ...]], TaskSpec] = {}
_PARSED_MAX: Final = 2048  # ~1.6 KB each with its key (~3 MB); at most ~5 MB with _PARSED_BYTES
_PARSED_BYTES: Final = 1024  # field values of a cached hash, in all


def status_stamp(status_at: object, updated_at: object) -> int:
    """The later of ``status_at`` (a stamp) and ``updated_at`` (seconds: the previous release's only
    stamp), as ``set_status.lua`` compares them."""
    return max(int(float(status_at or 0)), int(float(updated_at or 0) * 1_000_000))  # type: ignore[arg-type]


def _check(ok: bool, name: str, value: object) -> None:
    if not ok:
        raise InvalidTaskError(f"invalid {name}: {value!r}")


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidTaskError(f"invalid {name}: {value!r} (one of {', '.join(allowed)})")


class TaskRegistry(Protocol):
    # whether the daemon may change a task's status (re-enable a stopped task on a user's execute); a
    # store whose owner starts and stops tasks itself (GoodsHunter's API and its MySQL rows) says no
    owns_status: bool

    def get(self, task_id: int) -> TaskSpec | None: ...
    def queue_get_many(self, pipe: Any, task_ids: list[int]) -> None: ...
    def parse_many(self, task_ids: list[int], replies: list[Any]) -> dict[int, TaskSpec | None]: ...
    def statuses(self, task_ids: list[int]) -> dict[int, tuple[Status | None, int]]: ...
    def registered(self, task_ids: list[int]) -> list[bool]: ...
    def put_many(self, specs: Iterable[TaskSpec]) -> int: ...
    def delete(self, task_id: int) -> bool: ...
    def list(self) -> list[TaskSpec]: ...


class RedisTaskRegistry:
    """``goodshunter:task:spec:<id>`` hashes and the ``goodshunter:task:ids`` index set."""

    owns_status = True

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def get(self, task_id: int) -> TaskSpec | None:
        with connection_errors(f"read task {task_id}"):
            raw = self.redis.hgetall(keys.task_spec_key(task_id))
        return TaskSpec.from_hash(task_id, raw) if raw else None

    def queue_get_many(self, pipe: Any, task_ids: list[int]) -> None:
        """Queue the reads of these specs on a caller's pipeline (one round-trip with its other work)."""
        for task_id in task_ids:
            pipe.hgetall(keys.task_spec_key(task_id))

    def parse_many(self, task_ids: list[int], replies: list[Any]) -> dict[int, TaskSpec | None]:
        """The specs of ``queue_get_many``'s replies; an unreadable spec is logged and read as unknown."""
        specs: dict[int, TaskSpec | None] = {}
        for task_id, raw in zip(task_ids, replies, strict=True):
            try:
                specs[task_id] = TaskSpec.from_hash(task_id, raw) if raw else None
            except (ValueError, TypeError) as exc:
                log.error("task %d has an unreadable spec (%s); treated as unknown", task_id, exc)
                specs[task_id] = None
        return specs

    def statuses(self, task_ids: list[int]) -> dict[int, tuple[Status | None, int]]:
        """Each task's status (None: unknown) and when the request that set it was made (a stamp, see
        ``TaskSpec.status_at``), in one round-trip."""
        if not task_ids:
            return {}
        with connection_errors("read task statuses"):
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hmget(keys.task_spec_key(task_id), ["status", "status_at", "updated_at"])
            replies = pipe.execute()
        out: dict[int, tuple[Status | None, int]] = {}
        for task_id, (status, status_at, updated_at) in zip(task_ids, replies, strict=True):
            out[task_id] = (text(status) if status is not None else None, status_stamp(status_at, updated_at))  # type: ignore[assignment]
        return out

    def registered(self, task_ids: list[int]) -> list[bool]:
        """Which of these ids have a spec, in one round-trip."""
        if not task_ids:
            return []
        with connection_errors("read the task index"):
            return [bool(found) for found in self.redis.smismember(keys.TASK_INDEX_KEY, task_ids)]

    def put_many(self, specs: Iterable[TaskSpec]) -> int:
        """Replace whole specs (a field left out goes back to its default), pipelined."""
        count = 0
        with connection_errors("write task specs"):
            pipe = self.redis.pipeline(transaction=True)
            for spec in specs:
                key = keys.task_spec_key(spec.task_id)
                pipe.delete(key)
                pipe.hset(key, mapping=spec.to_hash())  # type: ignore[arg-type]
                pipe.sadd(keys.TASK_INDEX_KEY, spec.task_id)
                count += 1
            if count:
                pipe.execute()
        return count

    def delete(self, task_id: int) -> bool:
        with connection_errors(f"delete task {task_id}"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(keys.task_spec_key(task_id))
            pipe.srem(keys.TASK_INDEX_KEY, task_id)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def list(self) -> list[TaskSpec]:
        with connection_errors("list tasks"):
            ids = sorted(int(i) for i in self.redis.smembers(keys.TASK_INDEX_KEY))
            pipe = self.redis.pipeline(transaction=False)
            for task_id in ids:
                pipe.hgetall(keys.task_spec_key(task_id))
            raws = pipe.execute() if ids else []
        return [TaskSpec.from_hash(i, raw) for i, raw in zip(ids, raws, strict=True) if raw]
