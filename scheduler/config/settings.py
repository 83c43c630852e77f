"""The effective settings: one line per setting (type, default, kind, meaning), and the table of
them (``SPECS``) the loader and the generated docs read.

(Over 300 lines: the table is one line-group per setting, about fifty of them; it is read top to bottom as
the reference.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry

from scheduler.config.addresses import parse_go_dsn, split_host_port
from scheduler.config.kinds import (
    Boolean,
    Choice,
    ConsumerName,
    Duration,
    ExistingFile,
    GrpcTarget,
    HostPort,
    Integer,
    Kind,
    MysqlDsn,
    Name,
    RedisUrl,
    Secret,
    Text,
)
from scheduler.errors import ConfigError
from scheduler.taskqueue import keys

LogFormat = Literal["json", "text"]
LogLevel = Literal["debug", "info", "warning", "error"]
TaskStore = Literal["redis", "mysql"]
MiB: Final = 1024 * 1024
# after app.shutdown_grace, every closing step of a daemon (or a supervisor's group) shares this budget:
# the whole shutdown fits in shutdown_grace + AFTER_GRACE_S, the bound the manifests' kill timeouts keep
AFTER_GRACE_S: Final = 5.0
_SPEC: Final = "goodshunter.spec"


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
    worker_pool_size: int = _app(
        50, Integer(1, 1024), "Worker threads: how many crawls run at once (in each daemon process)."
    )
    processes: int = _app(
        1,
        Integer(1, 64),
        "Daemon processes `run` starts, consumers `<consumer_name>-0` … `-(N-1)` under one supervisor that "
        "restarts them and serves one status port for all; 1: the daemon itself, no supervisor.",
    )
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
        check_relations(values, {spec.key: spec.key for spec in SPECS})

    @property
    def lease_renew_interval(self) -> float:
        return self.lease_timeout / 3

    def consumer_names(self) -> list[str]:
        """The consumers ``run`` starts: ``consumer_name``, or with ``processes`` > 1 its supervisor's
        children ``<consumer_name>-0`` … ``-(N-1)`` (the supervisor itself is no consumer)."""
        if self.processes == 1:
            return [self.consumer_name]
        return [f"{self.consumer_name}-{i}" for i in range(self.processes)]

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
BY_NAME: Final = {spec.name: spec for spec in SPECS}
BY_KEY: Final = {spec.key: spec for spec in SPECS}

# (smaller, larger, strictly): pairs that only make sense in this order.
_ORDERED: Final = (
    ("retry_backoff_base", "retry_backoff_max", False),
    ("crawler_backoff_initial", "crawler_backoff_max", False),
    ("reclaim_interval", "lease_timeout", True),
)


def check_relations(values: Mapping[str, Any], where: Mapping[str, str]) -> None:
    for small, large, strictly in _ORDERED:
        if values[small] > values[large] or (strictly and values[small] == values[large]):
            a, b = BY_NAME[small], BY_NAME[large]
            raise ConfigError(
                f"{where[a.key]} = {a.kind.show(values[small])} must be {'<' if strictly else '≤'} "
                f"{where[b.key]} = {b.kind.show(values[large])}"
            )
    if values["task_store"] == "mysql" and not values["mysql_dsn"]:
        store, dsn = BY_NAME["task_store"].key, BY_NAME["mysql_dsn"].key
        raise ConfigError(f"{where[store]} = mysql needs {dsn} (env {BY_NAME['mysql_dsn'].env})")
    if bool(values["email_smtp_host"]) != bool(values["email_from_email"]):
        host, sender = BY_NAME["email_smtp_host"].key, BY_NAME["email_from_email"].key
        raise ConfigError(f"{where[host]} and {where[sender]} go together: set both to send mail, or neither")
    if values["crawler_tls_ca_file"] and not values["crawler_tls"]:
        ca, tls = BY_NAME["crawler_tls_ca_file"].key, BY_NAME["crawler_tls"].key
        raise ConfigError(f"{where[ca]} is set but {where[tls]} is false: set {tls} to true to use TLS")
