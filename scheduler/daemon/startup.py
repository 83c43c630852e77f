"""What a daemon settles before it does any work: a Redis that answers and accepts its password and ACL,
and its consumer name to itself.

Redis that is not up yet is waited for with back-off (a daemon may start before Redis); a refused password
or a refused command (ACL) is fatal: restarting will not fix it, so it is one clear line and exit 1.

The consumer name: two daemons on one name silently share one pending list (each resumes and renews the
other's entries, neither reclaims them), which is how a second daemon left on the default name (the host
name) loses work. So a daemon claims its name by writing its heartbeat key, and refuses to start while
another *live* daemon holds it. The heartbeat (``timers.heartbeat_payload``) names host and pid, plus what
tells one process from another: a random ``token`` per daemon, the kernel's ``boot_id``, the ``pid_ns``
(pid namespace) and the process's ``started`` time (``/proc/PID/stat`` field 22, clock ticks since boot).

Whose heartbeat it is decides how it is judged:

- this host (same host name, boot and pid namespace): the process is looked at. Our own pid means a
  process before us (container restarts reuse pid 1): dead, unless a daemon of this very process holds it.
  A pid that does not exist, exists with another start time (reused) or is a zombie: dead. The same pid
  and start time: alive, refused at once.
- another host (or a pid we cannot look at): alive only if the heartbeat is renewed while we watch it for
  one heartbeat interval plus a margin (a pod rescheduled after ``kill -9`` waits that long, never more).

A dead holder's key is taken over with a compare-and-set, so two newcomers cannot both win it.

(Over 300 lines, most of it this explanation: judging a holder's liveness is one decision, kept whole.)
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Literal

import redis
from redis.exceptions import NoPermissionError

from scheduler.config.settings import Settings
from scheduler.daemon.timers import heartbeat_payload
from scheduler.errors import SchedulerError
from scheduler.inspect.daemons import parse_heartbeat
from scheduler.taskqueue import keys

log = logging.getLogger(__name__)

Verdict = Literal["alive", "dead", "unknown"]
STOPPED: Literal["stopped"] = "stopped"
IDENTITY_FIELDS = ("boot_id", "pid_ns")  # must match for a heartbeat to be from this host's processes


class StartupError(SchedulerError):
    """A start-up failure that waiting will not fix: the message is the whole story, in one line."""


def renewal_window(heartbeat_interval: float) -> float:
    """How long a newcomer watches a heartbeat it cannot judge: a live daemon renews it well within."""
    return heartbeat_interval + max(2.5, heartbeat_interval / 2)


def heartbeat_ttl(heartbeat_interval: float) -> int:
    return max(1, int(heartbeat_interval * 3))


# -- what this process is ------------------------------------------------------------------------------------


def process_start(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process from /proc, or None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (fields[0], fields[19]) if len(fields) > 19 else None


@cache
def _machine() -> dict[str, str]:
    found: dict[str, str] = {}
    try:
        found["boot_id"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        pass
    try:
        found["pid_ns"] = os.readlink("/proc/self/ns/pid")
    except OSError:
        pass
    return found


def process_identity() -> dict[str, str]:
    """Fields of this process's heartbeat beyond host and pid (where the platform has them)."""
    found = dict(_machine())
    started = process_start(os.getpid())
    if started is not None:
        found["started"] = started[1]
    return found


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# -- the claim -------------------------------------------------------------------------------------------------

_LIVE: dict[str, NameClaim] = {}  # token → claim, of the daemons of this process
_LIVE_LOCK = threading.Lock()


class NameClaim:
    """A consumer name held by a daemon of this process: the identity its heartbeats carry."""

    def __init__(self, client: redis.Redis, key: str, consumer: str) -> None:
        self.client = client
        self.key = key
        self.consumer = consumer
        self.token = uuid.uuid4().hex
        self.identity: dict[str, object] = {"token": self.token, **process_identity()}
        self._foreign: set[str] = set()

    def payload(self, busy: int, workers: int, circuit: str) -> str:
        return heartbeat_payload(self.consumer, busy, workers, circuit, self.identity)

    def hold(self) -> None:
        with _LIVE_LOCK:
            _LIVE[self.token] = self

    def overwrote(self, old: object) -> None:
        """After a heartbeat write: a foreign token in the value it replaced means another daemon runs on
        this name (it judged us dead while we were stalled past the renewal window). Said once each."""
        beat = parse_heartbeat(old) if isinstance(old, bytes | str) else None
        if not beat or beat.get("token") == self.token:
            return
        token = str(beat.get("token"))
        if token in self._foreign:
            return
        self._foreign.add(token)
        log.error(
            "consumer name %r is also used by pid %s on %s: two daemons share one pending list; stop one, "
            "or give it its own name (--consumer / app.consumer_name)",
            self.consumer, beat.get("pid"), beat.get("host"),
        )  # fmt: skip

    def release(self) -> None:
        """Delete the heartbeat, only if it is still ours (never a successor's)."""
        with _LIVE_LOCK:
            _LIVE.pop(self.token, None)
        _delete_if(self.client, self.key, lambda beat: beat.get("token") == self.token)


def release_unclaimed(client: redis.Redis, key: str) -> None:
    """Delete a heartbeat written without a claim (no token) by this very process, as before claims."""
    me = (socket.gethostname(), os.getpid())
    _delete_if(client, key, lambda beat: "token" not in beat and (beat.get("host"), beat.get("pid")) == me)


def _delete_if(client: redis.Redis, key: str, mine: Callable[[dict[str, object]], bool]) -> None:
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.watch(key)  # type: ignore[no-untyped-call, unused-ignore]
            beat = parse_heartbeat(pipe.get(key))
            if beat and mine(beat):
                pipe.multi()
                pipe.delete(key)
                pipe.execute()
    except redis.RedisError:
        pass  # the TTL ends it


def held(client: redis.Redis, key: str) -> NameClaim | None:
    """The claim a daemon of this process holds on ``key`` through ``client``, if any."""
    with _LIVE_LOCK:
        return next((c for c in _LIVE.values() if c.client is client and c.key == key), None)


def judge(beat: dict[str, object]) -> tuple[Verdict, str]:
    """Is the daemon that wrote this heartbeat alive? ``unknown``: only watching it for renewal tells."""
    host, pid = beat.get("host"), beat.get("pid")
    if not isinstance(host, str) or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return "unknown", "a daemon whose heartbeat names no host and pid"
    who = f"pid {pid} on {host}"
    token = beat.get("token")
    with _LIVE_LOCK:
        if isinstance(token, str) and token in _LIVE:
            return "alive", f"{who} (a daemon in this same process)"
    mine = _machine()
    if host != socket.gethostname() or any(
        beat.get(k) is not None and beat.get(k) != mine.get(k) for k in IDENTITY_FIELDS
    ):
        return "unknown", who  # another machine, container or boot: its processes are not ours to see
    if pid == os.getpid():
        return "dead", f"{who} (a process before this one, with the same pid)"
    if not _exists(pid):
        return "dead", f"{who} (no such process any more)"
    now, then = process_start(pid), beat.get("started")
    if now is not None and now[0] in ("Z", "X"):
        return "dead", f"{who} (exited)"
    if now is not None and then is not None:
        if str(then) != now[1]:
            return "dead", f"{who} (that pid now belongs to another process)"
        return "alive", who
    return "unknown", f"{who} (a process with that pid exists)"


def _watch(
    client: redis.Redis, key: str, raw: bytes | str, window: float, stopping: threading.Event
) -> bytes | str | Literal["stopped"] | None:
    """The key's value once it changes from ``raw``, or ``raw`` after ``window`` seconds unchanged."""
    deadline = time.monotonic() + window
    poll = min(0.2, window / 10)
    while time.monotonic() < deadline:
        if stopping.wait(poll):
            return STOPPED
        now: bytes | str | None = client.get(key)
        if now != raw:
            return now
    return raw


def claim_name(settings: Settings, client: redis.Redis, stopping: threading.Event) -> NameClaim | None:
    """Take this daemon's consumer name, waiting out a holder that may be dead; None if asked to stop.
    Raises StartupError while another live daemon holds it."""
    s = settings
    key = keys.heartbeat_key(s.task_queue_stream, s.task_queue_group, s.consumer_name)
    claim = NameClaim(client, key, s.consumer_name)
    payload = claim.payload(0, s.worker_pool_size, "closed")
    ttl = heartbeat_ttl(s.heartbeat_interval)
    window = renewal_window(s.heartbeat_interval)
    while not stopping.is_set():
        if client.set(key, payload, ex=ttl, nx=True):
            claim.hold()
            return claim
        raw: bytes | str | None = client.get(key)
        if raw is None:
            continue  # gone meanwhile (stopped, expired): try again
        beat = parse_heartbeat(raw) or {}
        verdict, who = judge(beat)
        if verdict == "unknown":
            log.info(
                "consumer name %r is held by %s: waiting up to %.1fs to see whether it is still alive",
                s.consumer_name, who, window,
            )  # fmt: skip
            seen = _watch(client, key, raw, window, stopping)
            if seen == STOPPED:
                return None
            if seen is None:
                continue  # released meanwhile: try again
            if seen != raw:
                if (parse_heartbeat(seen) or {}).get("token") != beat.get("token"):
                    continue  # claimed by a third daemon meanwhile: judge that one
                verdict, who = "alive", f"{who}, whose heartbeat was renewed"
            else:
                verdict = "dead"
        if verdict == "alive":
            raise StartupError(
                f"consumer name {s.consumer_name!r} is in use by a live daemon, {who}, in "
                f"{s.task_queue_stream} / {s.task_queue_group}; two daemons on one name would share one "
                "pending list: give this one its own name with --consumer NAME or app.consumer_name "
                "(APP_CONSUMER_NAME)"
            )
        if _replace(client, key, raw, payload, ttl):
            ts = beat.get("ts")
            age = f", last heartbeat {time.time() - ts:.1f}s ago" if isinstance(ts, int | float) else ""
            log.warning("consumer name %r taken over from a dead daemon: %s%s", s.consumer_name, who, age)
            claim.hold()
            return claim
    return None


def _replace(client: redis.Redis, key: str, old: bytes | str, payload: str, ttl: int) -> bool:
    """SET key payload, only if it still holds ``old`` (False: it changed, judge again)."""
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.watch(key)  # type: ignore[no-untyped-call, unused-ignore]
            if pipe.get(key) != old:
                return False
            pipe.multi()
            pipe.set(key, payload, ex=ttl)
            pipe.execute()
            return True
    except redis.WatchError:
        return False


# -- the whole start-up ----------------------------------------------------------------------------------------


def prepare(
    settings: Settings,
    client: redis.Redis,
    stopping: threading.Event,
    *,
    preload: Callable[[], None] | None = None,
    waiting: Callable[[], None] | None = None,
) -> NameClaim | None:
    """Wait for Redis (back-off), check its password and ACL, run ``preload`` (the Lua scripts), claim the
    consumer name. None: asked to stop while waiting. Raises StartupError on what waiting cannot fix.
    ``waiting`` is called before each wait for Redis (the daemon answers its probes meanwhile)."""
    target = settings.redis_target()
    failures = 0
    while not stopping.is_set():
        try:
            client.ping()
            if preload is not None:
                try:
                    preload()
                except (redis.ConnectionError, redis.TimeoutError, NoPermissionError):
                    raise
                except redis.RedisError as exc:
                    log.warning("could not load the Lua scripts yet (%s); they load on first use", exc)
            claim = claim_name(settings, client, stopping)
        except redis.AuthenticationError:  # a ConnectionError to redis-py: must come first
            if not settings.secrets():
                raise StartupError(
                    f"Redis at {target} refused the password: it wants one; set redis.password "
                    "(REDIS_PASSWORD) or put it in redis.url"
                ) from None
            raise StartupError(f"Redis at {target} refused the password") from None
        except NoPermissionError as exc:
            raise StartupError(f"Redis at {target} refused a command the daemon needs (ACL): {exc}") from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            failures += 1
            delay = min(5.0, 0.1 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0)
            if failures == 1 or failures % 10 == 0:
                log.warning(
                    "Redis at %s is not reachable yet (%s: %s); waiting for it before starting, next try in "
                    "%.1fs",
                    target, type(exc).__name__, exc, delay,
                )  # fmt: skip
            if waiting is not None:
                waiting()
            stopping.wait(delay)
            continue
        if failures:
            log.info("Redis at %s reachable after %d failed attempts", target, failures)
        return claim
    return None
