"""Settings: defaults, then ``config.json``, then environment variables, then overrides; validated once.

Every setting is one line of the ``Settings`` class below: its type, default, kind of value (how it is
read from text or JSON, and what is allowed) and meaning. The config key is the attribute name under
``app.`` (``redis.`` for the ``redis_*`` ones) and the environment variable is the key upper-cased with
``_`` for ``.``: ``worker_pool_size`` is ``app.worker_pool_size`` and ``APP_WORKER_POOL_SIZE``.
docs/CONFIGURATION.md and configs/config.example.json are generated from the same table
(``reference_markdown()``, ``example_document()``) and a test keeps them in step.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry

from scheduler.durations import format_duration, parse_duration
from scheduler.errors import ConfigError
from scheduler.taskqueue import keys

__all__ = ["SPECS", "LogFormat", "LogLevel", "Settings", "Spec", "load_settings", "redact"]

LogFormat = Literal["json", "text"]
LogLevel = Literal["debug", "info", "warning", "error"]
TaskStore = Literal["redis", "mysql"]

DEFAULT_CONFIG_PATH: Final = "configs/config.json"
MASK: Final = "***"
MiB: Final = 1024 * 1024

# Keys the Go service reads from the same "app" section: a shared config.json must load, so these are
# skipped; anything else unknown in "app" or "redis" is a typo and stops start-up.
GO_ONLY_APP_KEYS: Final = frozenset(
    {
        "env", "http_addr", "new_item_duration", "guest_idle_timeout", "guest_heartbeat",
        "max_tasks_per_user", "queue_capacity", "queue_batch_size", "jwt_secret",
        "rate_limit", "rate_burst", "dedup_window", "proxy_cooldown", "max_tasks",
    }
)  # fmt: skip

_SPEC: Final = "goodshunter.spec"
_SECRET_IN_URL: Final = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#]*@")
_SECRET_IN_QUERY: Final = re.compile(r"(?P<name>[?&]password=)[^&#\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the credentials of any URL in it (``user:pass@``, ``?password=``) shown as ``***``."""
    if "://" not in text and "=" not in text:  # neither pattern can match: skip both regexes (hot path)
        return text
    return _SECRET_IN_QUERY.sub(rf"\g<name>{MASK}", _SECRET_IN_URL.sub(rf"\g<scheme>{MASK}@", text))


def compact_duration(seconds: float) -> str:
    """Go's ``Duration.String()`` without zero tails, as people write it: ``5m``, ``168h``, ``1h30m``."""
    text = format_duration(seconds)
    if text.endswith("m0s"):
        text = text[:-2]
    if text.endswith("h0m"):
        text = text[:-2]
    return text


_HOST_PORT: Final = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]@]+):(?P<port>[0-9]{1,5})")


def split_host_port(addr: str) -> tuple[str, int]:
    """``"host:6379"`` or ``"[::1]:6379"`` to (host, port); ValueError if it is neither."""
    match = _HOST_PORT.fullmatch(addr)
    if not match or not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"must be host:port with a port from 1 to 65535, got {addr!r}")
    return match["host"].strip("[]"), int(match["port"])


# --- kinds of value: how a setting is read from JSON or text, and what is allowed -----------------------


class Kind:
    """Reads one setting. ``native`` says the value comes from Python (defaults, overrides), not text."""

    describe = ""
    optional = False  # None and "" mean "not set"

    def read(self, raw: object, *, native: bool) -> object:
        if self.optional and (raw is None or raw == ""):
            return None
        return self.convert(raw, native)

    def convert(self, raw: object, native: bool) -> object:
        raise NotImplementedError

    def show(self, value: object) -> object:
        """The value as shown in ``masked()``, ``repr`` and the docs: JSON-friendly and safe to log."""
        return value


class Boolean(Kind):
    describe = "`true`/`false` (also `1`/`0`, `yes`/`no`)"
    _WORDS: Final = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

    def convert(self, raw: object, native: bool) -> object:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str) and raw.strip().lower() in self._WORDS:
            return self._WORDS[raw.strip().lower()]
        raise ValueError(f"must be true or false (or 1/0, yes/no), got {raw!r}")


class Integer(Kind):
    def __init__(self, low: int, high: int | None = None) -> None:
        self.low, self.high = low, high
        self.describe = f"{low} … {high}" if high is not None else f"≥ {low}"

    def convert(self, raw: object, native: bool) -> object:
        value: int | None = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and re.fullmatch(r"\s*[-+]?[0-9]+\s*", raw):
            value = int(raw)
        if value is None or value < self.low or (self.high is not None and value > self.high):
            bounds = f"from {self.low} to {self.high}" if self.high is not None else f"≥ {self.low}"
            raise ValueError(f"must be an integer {bounds}, got {raw!r}")
        return value


class Duration(Kind):
    """Go duration text (``"5m"``); float seconds when the value comes from Python."""

    def __init__(self, *, above: float | None = None, at_least: float | None = None) -> None:
        self.above, self.at_least = above, at_least
        low = above if above is not None else at_least or 0.0
        self.bound = f"{'>' if above is not None else '≥'} {compact_duration(low) if low else '0'}"
        self.describe = f"duration {self.bound}"

    def convert(self, raw: object, native: bool) -> object:
        if native and isinstance(raw, int | float) and not isinstance(raw, bool):
            seconds = float(raw)
        elif isinstance(raw, str):
            seconds = parse_duration(raw)
        else:
            raise ValueError(f'must be a Go duration string such as "5m" or "90s", got {raw!r}')
        too_small = (self.above is not None and not seconds > self.above) or (
            self.at_least is not None and not seconds >= self.at_least
        )
        if too_small or seconds != seconds or seconds == float("inf"):
            raise ValueError(f"must be a duration {self.bound}, got {raw!r}")
        return seconds

    def show(self, value: object) -> object:
        return compact_duration(value) if isinstance(value, float) else value


class Choice(Kind):
    def __init__(self, *choices: str, aliases: Mapping[str, str] | None = None) -> None:
        self.choices, self.aliases = choices, dict(aliases or {})
        self.describe = " / ".join(f"`{c}`" for c in choices)

    def convert(self, raw: object, native: bool) -> object:
        if isinstance(raw, str):
            word = self.aliases.get(raw.strip().lower(), raw.strip().lower())
            if word in self.choices:
                return word
        raise ValueError(f"must be one of {', '.join(self.choices)}, got {raw!r}")


class Name(Kind):
    describe = "text, no spaces"

    def convert(self, raw: object, native: bool) -> object:
        if not isinstance(raw, str) or not raw or re.search(r"\s", raw):
            raise ValueError(f"must be non-empty text without spaces, got {raw!r}")
        return raw


class ConsumerName(Name):
    def read(self, raw: object, *, native: bool) -> object:
        if raw is None or raw == "":
            raw = socket.gethostname()
        return self.convert(raw, native)


class HostPort(Kind):
    describe = "`host:port`"

    def convert(self, raw: object, native: bool) -> object:
        if not isinstance(raw, str):
            raise ValueError(f"must be host:port, got {raw!r}")
        split_host_port(raw)
        return raw


class GrpcTarget(Kind):
    describe = "`host:port` or gRPC target"
    _URI: Final = re.compile(r"(dns|unix|unix-abstract|ipv4|ipv6|vsock):\S+")

    def convert(self, raw: object, native: bool) -> object:
        if isinstance(raw, str) and self._URI.fullmatch(raw):
            return raw
        try:
            return HostPort().convert(raw, native)
        except ValueError:
            raise ValueError(
                f"must be host:port or a gRPC target such as dns:///host:port, got {raw!r}"
            ) from None


class ExistingFile(Kind):
    describe = "path of a file"
    optional = True

    def convert(self, raw: object, native: bool) -> object:
        if not isinstance(raw, str) or not os.path.isfile(raw):
            raise ValueError(f"must be the path of an existing file, got {raw!r}")
        return raw


class Secret(Kind):
    describe = "text (secret)"
    optional = True

    def convert(self, raw: object, native: bool) -> object:
        if not isinstance(raw, str):
            raise ValueError(f"must be a string (value not shown), got a value of type {type(raw).__name__}")
        return raw

    def show(self, value: object) -> object:
        return MASK if value else None


class Text(Kind):
    describe = "text"
    optional = True

    def convert(self, raw: object, native: bool) -> object:
        if not isinstance(raw, str) or not raw.strip() or not raw.isprintable():
            raise ValueError(f"must be non-empty printable text, got {raw!r}")
        return raw.strip()


@dataclasses.dataclass(frozen=True, repr=False)
class MysqlTarget:
    """A Go MySQL driver DSN, read: ``user:pass@tcp(host:port)/dbname?param=value``."""

    user: str
    password: str
    host: str
    port: int
    unix_socket: str | None
    database: str
    params: Mapping[str, str]

    def __repr__(self) -> str:
        return f"MysqlTarget({self.shown()!r})"

    def shown(self) -> str:
        """The DSN without its password, for logs."""
        where = f"unix({self.unix_socket})" if self.unix_socket else f"tcp({self.host}:{self.port})"
        user = f"{self.user}:{MASK}@" if self.password else (f"{self.user}@" if self.user else "")
        return f"{user}{where}/{self.database}"


def parse_go_dsn(dsn: str) -> MysqlTarget:
    """Parse the Go driver's DSN form, as GoodsHunter's ``mysql.dsn`` holds it (the password may hold
    ``@``/``:``: like the Go driver, the last ``/`` ends the address and the last ``@`` before it ends
    the credentials)."""
    slash = dsn.rfind("/")
    if slash < 0:
        raise ValueError("must look like user:password@tcp(host:3306)/dbname (no '/dbname' found)")
    head, tail = dsn[:slash], dsn[slash + 1 :]
    database, _, query = tail.partition("?")
    if not database:
        raise ValueError("names no database: user:password@tcp(host:3306)/dbname")
    at = head.rfind("@")
    creds, address = (head[:at], head[at + 1 :]) if at >= 0 else ("", head)
    user, _, password = creds.partition(":")
    match = re.fullmatch(r"(?:(?P<net>[a-z0-9]+)(?:\((?P<addr>[^)]*)\))?)?", address)
    if match is None:
        raise ValueError("has an address the Go driver would not read (say tcp(host:3306))")
    net, addr = match["net"] or "tcp", match["addr"] or ""
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if params.get("tls", "false").lower() not in ("false", "0", ""):
        raise ValueError(
            "asks for tls, which the scheduler does not speak to MySQL yet (no plaintext fallback)"
        )
    if net == "unix":
        return MysqlTarget(user, password, "localhost", 3306, addr or "/tmp/mysql.sock", database, params)
    if net not in ("tcp", "tcp4", "tcp6"):
        # not echoed: a password holding '@' or '/' may have been read as the network
        raise ValueError("names a network other than tcp or unix (a password with '@' or '/'?)")
    host, port = ("127.0.0.1", 3306) if not addr else (split_host_port(addr) if ":" in addr else (addr, 3306))
    return MysqlTarget(user, password, host, port, None, database, params)


class MysqlDsn(Kind):
    describe = "Go DSN (secret password)"
    optional = True

    def convert(self, raw: object, native: bool) -> object:
        if not isinstance(raw, str):
            raise ValueError(f"must be a string (value not shown), got a value of type {type(raw).__name__}")
        try:
            parse_go_dsn(raw.strip())
        except ValueError as exc:
            raise ValueError(f"{exc} (value not shown)") from None
        return raw.strip()

    def show(self, value: object) -> object:
        return parse_go_dsn(value).shown() if isinstance(value, str) else None


class RedisUrl(Kind):
    describe = "`redis://…`, `rediss://…`, `unix://…`"
    optional = True

    def convert(self, raw: object, native: bool) -> object:
        if not isinstance(raw, str):
            raise ValueError(
                f"must be a redis://, rediss:// or unix:// URL, got a value of type {type(raw).__name__}"
            )
        problem = self._problem(raw)
        if problem:
            raise ValueError(f"{problem}, got {redact(raw)!r}")
        return raw

    @staticmethod
    def _problem(url: str) -> str | None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return "must start with redis://, rediss:// or unix://"
        if re.search(r"\s", url):
            return "must not contain spaces"
        try:
            parts = urlsplit(url)
        except ValueError:  # its text quotes the netloc, password included: never shown
            return "is not a valid Redis URL (characters that normalise to '/', '?', '#' or '@')"
        try:
            port = parts.port
            redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            return f"is not a valid Redis URL ({redact(str(exc))})"
        if parts.scheme == "unix":
            return None if parts.path else "must name the socket path, as in unix:///run/redis.sock"
        if not parts.hostname:
            return "must name a host, as in redis://host:6379/0"
        if port == 0:
            return "must have a port from 1 to 65535"
        if parts.path.strip("/") and not parts.path.strip("/").isdigit():
            return "must end with a database number (/0) or nothing"
        return None

    def show(self, value: object) -> object:
        return redact(value) if isinstance(value, str) else value


T = TypeVar("T")


class _Refused(Exception):
    def __init__(self, error: redis.RedisError) -> None:
        self.error = error


class _QuickRetry(Retry):
    """redis-py's retry, except that a refused password or permission fails at once: retrying cannot fix
    it, and with health checks on, redis-py would take most of a minute to report it."""

    def call_with_retry(self, do: Callable[[], T], fail: Callable[..., Any], *args: Any, **kwargs: Any) -> T:
        def attempt() -> T:
            try:
                return do()
            except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
                raise _Refused(exc) from exc

        try:
            return super().call_with_retry(attempt, fail, *args, **kwargs)
        except _Refused as refused:
            raise refused.error from None


def _app(default: T, kind: Kind, doc: str) -> T:
    return dataclasses.field(default=default, metadata={_SPEC: ("app", kind, doc)})


def _redis(default: T, kind: Kind, doc: str) -> T:
    return dataclasses.field(default=default, metadata={_SPEC: ("redis", kind, doc)})


def _mysql(default: T, kind: Kind, doc: str) -> T:
    return dataclasses.field(default=default, metadata={_SPEC: ("mysql", kind, doc)})


def _email(default: T, kind: Kind, doc: str) -> T:
    return dataclasses.field(default=default, metadata={_SPEC: ("email", kind, doc)})


@dataclasses.dataclass(frozen=True, repr=False)
class Settings:
    """The effective settings. Durations are float seconds. Build with ``load_settings()``."""

    enable_redis_queue: bool = _app(
        True, Boolean(), "Use the Redis stream task queue (the Go API publishes to it only when true)."
    )
    task_queue_stream: str = _app(
        keys.DEFAULT_STREAM,
        Name(),
        "The task stream; dead letters, retries and results use keys derived from it.",
    )
    task_queue_group: str = _app(keys.DEFAULT_GROUP, Name(), "The consumer group every daemon joins.")
    consumer_name: str = _app(
        "",
        ConsumerName(),
        "This daemon's consumer name in the group; unique per daemon. Empty: the host name.",
    )
    crawler_grpc_addr: str = _app(
        "localhost:50051",
        GrpcTarget(),
        "The crawler's gRPC address: `host:port` or a gRPC target such as `dns:///crawler:50051`.",
    )
    worker_pool_size: int = _app(50, Integer(1, 1024), "Worker threads: how many crawls run at once.")
    schedule_interval: float = _app(300.0, Duration(above=0), "Default period of a periodic task.")
    crawler_deadline: float = _app(120.0, Duration(above=0), "Deadline of one crawler call.")
    crawler_attempts: int = _app(
        3, Integer(1, 10), "Calls per crawl on a transient gRPC error (1 = no retry)."
    )
    crawler_backoff_initial: float = _app(
        0.2, Duration(above=0), "First wait between crawler call attempts; doubles each time."
    )
    crawler_backoff_max: float = _app(5.0, Duration(above=0), "Longest wait between crawler call attempts.")
    crawler_tls: bool = _app(False, Boolean(), "Connect to the crawler over TLS.")
    crawler_tls_ca_file: str | None = _app(
        None,
        ExistingFile(),
        "PEM file of the CA that signed the crawler's certificate (needs `app.crawler_tls`). None: the system roots.",
    )
    max_retry: int = _app(
        3,
        Integer(0, 100),
        "Requeues of a failed task before it goes to the dead-letter stream (3 = 4 attempts).",
    )
    retry_backoff_base: float = _app(
        5.0, Duration(at_least=0), "Requeue delay of the first retry: base * 2^retry, capped, with jitter."
    )
    retry_backoff_max: float = _app(300.0, Duration(at_least=0), "Longest requeue delay.")
    lease_timeout: float = _app(
        30.0,
        Duration(at_least=1),
        "An entry whose consumer stops renewing its lease this long is reclaimed by another; renewed every third of it.",
    )
    reclaim_interval: float = _app(5.0, Duration(above=0), "How often to look for expired leases to reclaim.")
    max_deliveries: int = _app(
        5, Integer(1), "Deliveries of one entry (crash loops) before it goes to the dead-letter stream."
    )
    breaker_failure_threshold: int = _app(
        5, Integer(1), "Consecutive crawler failures that open the circuit breaker (reading stops)."
    )
    breaker_open_duration: float = _app(
        10.0, Duration(above=0), "How long the breaker stays open before a trial call."
    )
    shutdown_grace: float = _app(
        25.0, Duration(at_least=0), "On SIGTERM, how long in-flight tasks may finish before the daemon exits."
    )
    metrics_host: str = _app(
        "0.0.0.0", Name(), "Listen address of the HTTP server for /metrics, /healthz and /readyz."
    )
    metrics_port: int = _app(9090, Integer(0, 65535), "Port of that server; 0 turns it off.")
    heartbeat_interval: float = _app(
        5.0, Duration(above=0), "How often the daemon writes its heartbeat (read by `check`)."
    )
    stream_maxlen: int = _app(
        keys.DEFAULT_STREAM_MAXLEN,
        Integer(1),
        "Approximate length the task stream is trimmed to (never past unacknowledged entries).",
    )
    dlq_maxlen: int = _app(
        keys.DEFAULT_DLQ_MAXLEN, Integer(1), "Approximate length of the dead-letter stream."
    )
    results_maxlen: int = _app(
        keys.DEFAULT_RESULTS_MAXLEN, Integer(1), "Approximate length of the results stream."
    )
    trim_interval: float = _app(30.0, Duration(above=0), "How often the streams are trimmed.")
    seen_ttl: float = _app(
        604800.0, Duration(above=0), "How long a task remembers items it has already reported."
    )
    seen_items_per_task: int = _app(
        2000,
        Integer(1, 1_000_000),
        "Items a task remembers for new-item detection: the most recently seen are kept, older ones forgotten.",
    )
    max_entry_bytes: int = _app(
        keys.DEFAULT_MAX_ENTRY_BYTES,
        Integer(1024, 16 * MiB),
        "Largest stream entry accepted; a bigger one is a poison message.",
    )
    log_format: LogFormat = _app(  # noqa: RUF009 (a Literal alias is as immutable as str)
        "json", Choice("json", "text"), "Log lines as JSON (for collectors) or plain text."
    )
    log_level: LogLevel = _app(  # noqa: RUF009
        "info",
        Choice("debug", "info", "warning", "error", aliases={"warn": "warning"}),
        "Least severe level logged (`warn` is read as `warning`, as the Go service writes it).",
    )
    task_store: TaskStore = _app(  # noqa: RUF009
        "redis",
        Choice("redis", "mysql"),
        "Where task specs come from: `redis` (the embedded registry: the demo, a bare machine) or `mysql` "
        "(GoodsHunter's `tasks` table; items, timelines and e-mails are written as the Go scheduler does).",
    )
    max_items_per_task: int = _app(
        300,
        Integer(1, 1_000_000),
        "With `task_store` mysql: links kept per task in `task_items`, the oldest removed first.",
    )
    redis_addr: str = _redis("localhost:6379", HostPort(), "Redis `host:port`.")
    redis_password: str | None = _redis(None, Secret(), "Redis password. None/empty: no AUTH.")
    redis_db: int = _redis(0, Integer(0), "Redis database number.")
    redis_url: str | None = _redis(
        None,
        RedisUrl(),
        "`redis://`, `rediss://` (TLS) or `unix://` URL; wins over `redis.addr`. `redis.password` and `redis.db` fill in what the URL leaves out.",
    )
    mysql_dsn: str | None = _mysql(
        None,
        MysqlDsn(),
        "GoodsHunter's database, in the Go driver's form `user:pass@tcp(host:3306)/goodshunter?parseTime=true&loc=Local`; needed by `app.task_store` mysql.",
    )
    email_smtp_host: str | None = _email(
        None, Text(), "SMTP server for notifications. None: no mail is sent."
    )
    email_smtp_port: int = _email(
        587, Integer(1, 65535), "SMTP port: 465 is TLS from the start, others STARTTLS when offered."
    )
    email_smtp_user: str | None = _email(None, Text(), "SMTP login. None: no AUTH.")
    email_smtp_pass: str | None = _email(None, Secret(), "SMTP password.")
    email_from_email: str | None = _email(
        None, Text(), "Sender address of the notifications; needed with `email.smtp_host`."
    )

    def __post_init__(self) -> None:
        # Direct construction and dataclasses.replace() get the same checks as load_settings().
        values: dict[str, Any] = {}
        for spec in SPECS:
            try:
                values[spec.name] = spec.kind.read(getattr(self, spec.name), native=True)
            except ValueError as exc:
                raise ConfigError(f"{spec.key}: {exc}") from None
            object.__setattr__(self, spec.name, values[spec.name])
        _check_relations(values, {spec.key: spec.key for spec in SPECS})

    @property
    def lease_renew_interval(self) -> float:
        return self.lease_timeout / 3

    def __repr__(self) -> str:
        shown = ", ".join(f"{spec.name}={spec.kind.show(getattr(self, spec.name))!r}" for spec in SPECS)
        return f"Settings({shown})"

    def masked(self) -> dict[str, object]:
        """Effective settings by config key, secrets as ``***``: for ``--print-config`` and logs."""
        return {spec.key: spec.kind.show(getattr(self, spec.name)) for spec in SPECS}

    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log line (for ``configure_logging(secrets=...)``)."""
        found = [self.redis_password, self.email_smtp_pass]
        if self.mysql_dsn:
            found.append(parse_go_dsn(self.mysql_dsn).password)
        if self.redis_url:
            parts = urlsplit(self.redis_url)
            found += [unquote(parts.password or ""), *parse_qs(parts.query).get("password", [])]
        return tuple(dict.fromkeys(s for s in found if s))

    def redis_client(self, **options: Any) -> redis.Redis:
        """A bytes client (``decode_responses=False``); ``options`` go to ``redis.Redis``.

        Connection errors are retried 3 times within about a second (longer outages are the caller's
        loop's business); a refused password is not retried.
        """
        settings: dict[str, Any] = {
            "socket_connect_timeout": 5.0,
            "socket_timeout": 30.0,
            "health_check_interval": 30,
            "decode_responses": False,
            "retry": _QuickRetry(EqualJitterBackoff(cap=1.0, base=0.05), 3),
            "password": self.redis_password,
            "db": self.redis_db,
        }
        settings.update(options)
        if self.redis_url:
            # redis-py lets what the URL says win over these keyword arguments.
            return redis.Redis.from_url(self.redis_url, **settings)
        host, port = split_host_port(self.redis_addr)
        return redis.Redis(host=host, port=port, **settings)

    def redis_target(self) -> str:
        """Where Redis is, for logs: ``redis://127.0.0.1:6379/0`` (never credentials)."""
        if not self.redis_url:
            return f"redis://{self.redis_addr}/{self.redis_db}"
        parts = urlsplit(self.redis_url)
        db = self.redis_db
        query_db = parse_qs(parts.query).get("db")
        if query_db:
            db = int(query_db[0])
        elif parts.scheme != "unix" and parts.path.strip("/"):
            db = int(unquote(parts.path).replace("/", ""))
        if parts.scheme == "unix":
            return f"unix://{parts.path}?db={db}"
        host = parts.hostname or "localhost"
        host = f"[{host}]" if ":" in host else host
        return f"{parts.scheme}://{host}:{parts.port or 6379}/{db}"


@dataclasses.dataclass(frozen=True)
class Spec:
    """One row of the settings table."""

    name: str
    section: Literal["app", "redis", "mysql", "email"]
    kind: Kind
    doc: str
    default: object

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name.removeprefix(self.section + '_')}"

    @property
    def env(self) -> str:
        return self.key.replace(".", "_").upper()


def _specs() -> tuple[Spec, ...]:
    specs = []
    for f in dataclasses.fields(Settings):
        section, kind, doc = f.metadata[_SPEC]
        specs.append(Spec(f.name, section, kind, doc, f.default))
    return tuple(specs)


SPECS: Final = _specs()
_BY_NAME: Final = {spec.name: spec for spec in SPECS}
_BY_KEY: Final = {spec.key: spec for spec in SPECS}

# (smaller, larger, strictly): pairs that only make sense in this order.
_ORDERED: Final = (
    ("retry_backoff_base", "retry_backoff_max", False),
    ("crawler_backoff_initial", "crawler_backoff_max", False),
    ("reclaim_interval", "lease_timeout", True),
)


def _check_relations(values: Mapping[str, Any], where: Mapping[str, str]) -> None:
    for small, large, strictly in _ORDERED:
        if values[small] > values[large] or (strictly and values[small] == values[large]):
            a, b = _BY_NAME[small], _BY_NAME[large]
            raise ConfigError(
                f"{where[a.key]} = {a.kind.show(values[small])} must be {'<' if strictly else '≤'} "
                f"{where[b.key]} = {b.kind.show(values[large])}"
            )
    if values["task_store"] == "mysql" and not values["mysql_dsn"]:
        store, dsn = _BY_NAME["task_store"].key, _BY_NAME["mysql_dsn"].key
        raise ConfigError(f"{where[store]} = mysql needs {dsn} (env {_BY_NAME['mysql_dsn'].env})")
    if bool(values["email_smtp_host"]) != bool(values["email_from_email"]):
        host, sender = _BY_NAME["email_smtp_host"].key, _BY_NAME["email_from_email"].key
        raise ConfigError(f"{where[host]} and {where[sender]} go together: set both to send mail, or neither")
    if values["crawler_tls_ca_file"] and not values["crawler_tls"]:
        ca, tls = _BY_NAME["crawler_tls_ca_file"].key, _BY_NAME["crawler_tls"].key
        raise ConfigError(f"{where[ca]} is set but {where[tls]} is false: set {tls} to true to use TLS")


def load_settings(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Defaults, then the JSON file, then ``env`` (default ``os.environ``), then ``overrides``.

    ``path`` None: ``configs/config.json`` if it exists (relative to the working directory). An empty
    environment variable counts as unset, as in the Go original. ``overrides`` are keyed by attribute
    name or config key, hold typed values or text, and a None value means "not given".
    """
    raw: dict[str, tuple[object, str, bool]] = {}  # key -> (value, where it came from, is a Python value)
    file = _config_path(path)
    if file is not None:
        raw.update((key, (value, f"file {file}", False)) for key, value in _read_file(file).items())
    environ = os.environ if env is None else env
    for spec in SPECS:
        if environ.get(spec.env):
            raw[spec.key] = (environ[spec.env], f"env {spec.env}", False)
    for name, value in (overrides or {}).items():
        named = _BY_NAME.get(name) or _BY_KEY.get(name)
        if named is None:
            raise ConfigError(f"unknown setting {name!r} in overrides")
        if value is not None:
            raw[named.key] = (value, "override", True)

    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for spec in SPECS:
        value, source, native = raw.get(spec.key, (spec.default, "default", True))
        where[spec.key] = f"{spec.key} ({source})"
        try:
            values[spec.name] = spec.kind.read(value, native=native)
        except ValueError as exc:
            raise ConfigError(f"{where[spec.key]}: {exc}") from None
    _check_relations(values, where)
    return Settings(**values)


def _config_path(path: str | None) -> Path | None:
    if path:
        given = Path(path)
        if not given.exists():
            raise ConfigError(f"config file {path} does not exist")
        if not given.is_file():
            raise ConfigError(f"config file {path} is not a file")
        return given
    default = Path(DEFAULT_CONFIG_PATH)
    return default if default.is_file() else None


class _JsonObject(dict[str, Any]):
    """A JSON object that remembers keys it saw twice (``json`` silently keeps the last)."""

    duplicates: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    if len(obj) != len(pairs):
        names = [name for name, _ in pairs]
        obj.duplicates = tuple(sorted({n for n in names if names.count(n) > 1}))
    return obj


def _read_file(path: Path) -> dict[str, object]:
    """The ``app``, ``redis``, ``mysql`` and ``email`` values of a config file, by config key. Other
    sections are ignored; so are keys of ``mysql`` and ``email`` we do not read (the Go service's)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_object)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"config file {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(document, dict):
        raise ConfigError(f'config file {path}: must be a JSON object with sections such as "app", "redis"')
    found: dict[str, object] = {}
    unknown: list[str] = []
    for section in ("app", "redis", "mysql", "email"):
        body = document.get(section)
        if body is None:
            continue
        if not isinstance(body, _JsonObject):
            raise ConfigError(f'config file {path}: "{section}" must be a JSON object, got {body!r}')
        if body.duplicates:
            dup = ", ".join(f"{section}.{name}" for name in body.duplicates)
            raise ConfigError(f"config file {path}: {dup} given more than once")
        for name, value in body.items():
            key = f"{section}.{name}"
            if key in _BY_KEY:
                found[key] = value
            elif not (section == "app" and name in GO_ONLY_APP_KEYS) and section in ("app", "redis"):
                unknown.append(key)
    if unknown:
        raise ConfigError(f"config file {path}: unknown key{'s' * (len(unknown) > 1)} " + _suggest(unknown))
    return found


def _suggest(unknown: list[str]) -> str:
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(_BY_KEY), n=1, cutoff=0.75)
        shown = key if key.isprintable() else repr(key)  # one line, whatever the file holds
        named.append(f"{shown} (did you mean {close[0]}?)" if close else shown)
    return ", ".join(named)


# --- generated documentation -----------------------------------------------------------------------


def _shown_default(spec: Spec) -> str:
    if spec.name == "consumer_name":
        return "the host name"
    if spec.default is None:
        return "none"
    return f"`{json.dumps(spec.kind.show(spec.default), ensure_ascii=False)}`"


def reference_markdown() -> str:
    """The settings table of docs/CONFIGURATION.md."""
    rows = ["| key | environment variable | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for spec in SPECS:
        rows.append(
            f"| `{spec.key}` | `{spec.env}` | {_shown_default(spec)} | {spec.kind.describe} | {spec.doc} |"
        )
    return "\n".join(rows) + "\n"


def example_document() -> dict[str, dict[str, object]]:
    """configs/config.example.json: every key with its default (an empty string where there is none)."""
    document: dict[str, dict[str, object]] = {"app": {}, "redis": {}, "mysql": {}, "email": {}}
    for spec in SPECS:
        shown = spec.kind.show(spec.default)
        document[spec.section][spec.key.split(".", 1)[1]] = "" if shown is None else shown
    return document
