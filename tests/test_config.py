"""Settings: every key from file and environment, precedence, validation messages, secrets, Redis clients."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from scheduler.config.addresses import parse_go_dsn
from scheduler.config.docs import example_document, reference_markdown
from scheduler.config.load import load_settings
from scheduler.config.redaction import redact
from scheduler.config.settings import SPECS, Settings
from scheduler.devtools.redis_server import RedisServer, find_redis_server
from scheduler.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CA_FILE = "<a file that exists>"

# name -> (value in config.json, value in the environment, the resulting attribute).
# Every value differs from the default, so the test proves the key or variable was read.
SAMPLES: dict[str, tuple[object, str, object]] = {
    "task_queue_stream": ("gh:tasks", "gh:tasks", "gh:tasks"),
    "task_queue_group": ("g2", "g2", "g2"),
    "consumer_name": ("worker-7", "worker-7", "worker-7"),
    "crawler_grpc_addr": ("crawler:6000", "dns:///crawler:6000", None),
    "worker_pool_size": (8, "8", 8),
    "schedule_interval": ("90s", "1h30m", None),
    "crawler_deadline": ("30s", "30s", 30.0),
    "crawler_attempts": (1, "1", 1),
    "crawler_backoff_initial": ("50ms", "50ms", 0.05),
    "crawler_backoff_max": ("1m", "1m", 60.0),
    "crawler_tls": (True, "TRUE", True),
    "crawler_tls_ca_file": (CA_FILE, CA_FILE, CA_FILE),
    "processes": (4, "4", 4),
    "max_retry": (0, "0", 0),
    "retry_backoff_base": ("1s", "1.5s", None),
    "retry_backoff_max": ("1h", "1h", 3600.0),
    "lease_timeout": ("1m", "1m", 60.0),
    "reclaim_interval": ("2s", "2s", 2.0),
    "max_deliveries": (9, "9", 9),
    "breaker_failure_threshold": (2, "2", 2),
    "breaker_open_duration": ("1m", "1m", 60.0),
    "shutdown_grace": ("0", "0s", 0.0),
    "metrics_host": ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
    "metrics_port": (0, "0", 0),
    "heartbeat_interval": ("1s", "1s", 1.0),
    "stream_maxlen": (10, "10", 10),
    "dlq_maxlen": (11, "11", 11),
    "results_maxlen": (12, "12", 12),
    "trim_interval": ("1m", "1m", 60.0),
    "seen_ttl": ("24h", "24h", 86400.0),
    "seen_items_per_task": (500, "500", 500),
    "max_entry_bytes": (1024, "1024", 1024),
    "log_format": ("text", "TEXT", "text"),
    "log_level": ("warn", "DEBUG", None),
    "redis_addr": ("redis.internal:6380", "[::1]:6380", None),
    "redis_password": ("pw-file", "pw-env", None),
    "redis_db": (3, "3", 3),
    "redis_url": ("rediss://cache:6390/1", "unix:///run/redis.sock?db=2", None),
    "task_store": ("mysql", "MySQL", "mysql"),
    "max_items_per_task": (50, "60", None),
    "mysql_dsn": ("u:p@tcp(db:3306)/gh?parseTime=true", "u:p@w@tcp(db)/gh", None),
    "email_smtp_host": ("smtp.example.com", "mail.internal", None),
    "email_smtp_port": (465, "2525", None),
    "email_smtp_user": ("alerts", "alerts-env", None),
    "email_smtp_pass": ("mail-pw-file", "mail-pw-env", None),
    "email_from_email": ("hunter@example.com", "env@example.com", None),
}
# Settings that a sample needs alongside it (cross-field rules).
NEEDS: dict[str, dict[str, object]] = {
    "crawler_tls_ca_file": {"crawler_tls": True},
    "task_store": {"mysql_dsn": "root@tcp(127.0.0.1:3306)/goodshunter"},
    "email_smtp_host": {"email_from_email": "hunter@example.com"},
    "email_from_email": {"email_smtp_host": "smtp.example.com"},
}

SPEC = {spec.name: spec for spec in SPECS}


def _resolve(value: object, ca_file: str) -> object:
    return ca_file if value == CA_FILE else value


@pytest.fixture(autouse=True)
def _no_config_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may pick up a configs/config.json of the checkout, or the caller's environment."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return str(path)


def write_config(tmp_path: Path, document: object, name: str = "config.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


def one_line_error(**kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(**kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- every key ------------------------------------------------------------------------------------------


def test_every_setting_has_a_sample() -> None:
    assert set(SAMPLES) == set(SPEC)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_file_key_sets_the_setting(name: str, tmp_path: Path, ca_file: str) -> None:
    spec = SPEC[name]
    file_value, _, expected = SAMPLES[name]
    section, key = spec.key.split(".")
    document: dict[str, dict[str, object]] = {"app": {}, "redis": {}, "mysql": {}, "email": {}}
    document[section][key] = _resolve(file_value, ca_file)
    for other, value in NEEDS.get(name, {}).items():
        other_section, other_key = SPEC[other].key.split(".")
        document[other_section][other_key] = value
    settings = load_settings(write_config(tmp_path, document), env={})
    got = getattr(settings, name)
    if expected is None:
        expected = {
            "crawler_grpc_addr": "crawler:6000",
            "schedule_interval": 90.0,
            "retry_backoff_base": 1.0,
            "log_level": "warning",
            "redis_addr": "redis.internal:6380",
            "redis_password": "pw-file",
            "redis_url": "rediss://cache:6390/1",
            "max_items_per_task": 50,
            "mysql_dsn": "u:p@tcp(db:3306)/gh?parseTime=true",
            "email_smtp_host": "smtp.example.com",
            "email_smtp_port": 465,
            "email_smtp_user": "alerts",
            "email_smtp_pass": "mail-pw-file",
            "email_from_email": "hunter@example.com",
        }[name]
    assert got == _resolve(expected, ca_file)
    assert got != spec.default


@pytest.mark.parametrize("name", list(SAMPLES))
def test_environment_variable_sets_the_setting(name: str, ca_file: str) -> None:
    spec = SPEC[name]
    _, env_value, expected = SAMPLES[name]
    env = {spec.env: str(_resolve(env_value, ca_file))}
    for other, value in NEEDS.get(name, {}).items():
        env[SPEC[other].env] = str(value)
    got = getattr(load_settings(env=env), name)
    if expected is None:
        expected = {
            "crawler_grpc_addr": "dns:///crawler:6000",
            "schedule_interval": 5400.0,
            "retry_backoff_base": 1.5,
            "log_level": "debug",
            "redis_addr": "[::1]:6380",
            "redis_password": "pw-env",
            "redis_url": "unix:///run/redis.sock?db=2",
            "max_items_per_task": 60,
            "mysql_dsn": "u:p@w@tcp(db)/gh",
            "email_smtp_host": "mail.internal",
            "email_smtp_port": 2525,
            "email_smtp_user": "alerts-env",
            "email_smtp_pass": "mail-pw-env",
            "email_from_email": "env@example.com",
        }[name]
    assert got == _resolve(expected, ca_file)
    assert got != spec.default


def test_environment_variable_names_follow_the_keys() -> None:
    assert SPEC["worker_pool_size"].key == "app.worker_pool_size"
    assert SPEC["worker_pool_size"].env == "APP_WORKER_POOL_SIZE"
    assert SPEC["redis_addr"].key == "redis.addr"
    assert SPEC["redis_addr"].env == "REDIS_ADDR"
    assert SPEC["redis_url"].env == "REDIS_URL"
    for spec in SPECS:
        assert spec.env == spec.key.replace(".", "_").upper()


def test_defaults() -> None:
    settings = load_settings(env={})
    assert settings.task_queue_stream == "goodshunter:task:queue"
    assert settings.task_queue_group == "scheduler_group"
    assert settings.crawler_grpc_addr == "localhost:50051"
    assert settings.worker_pool_size == 50
    assert settings.schedule_interval == 300.0
    assert settings.consumer_name == socket.gethostname()
    assert settings.crawler_deadline == 120.0
    assert (settings.crawler_backoff_initial, settings.crawler_backoff_max) == (0.2, 5.0)
    assert (settings.retry_backoff_base, settings.retry_backoff_max) == (5.0, 300.0)
    assert settings.lease_timeout == 30.0
    assert settings.lease_renew_interval == 10.0
    assert settings.seen_ttl == 168 * 3600
    assert settings.max_entry_bytes == 65536
    assert (settings.log_format, settings.log_level) == ("json", "info")
    assert (settings.redis_addr, settings.redis_password, settings.redis_db) == ("localhost:6379", None, 0)
    assert settings.redis_url is None
    assert settings == Settings()


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_WORKER_POOL_SIZE", "7")
    assert load_settings().worker_pool_size == 7


# --- where values come from -----------------------------------------------------------------------------


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"app": {"worker_pool_size": 10, "max_retry": 1, "consumer_name": "file"}})
    env = {"APP_WORKER_POOL_SIZE": "20", "APP_CONSUMER_NAME": "env"}
    assert load_settings(env={}).worker_pool_size == 50
    assert load_settings(path, env={}).worker_pool_size == 10
    from_env = load_settings(path, env=env)
    assert (from_env.worker_pool_size, from_env.max_retry, from_env.consumer_name) == (20, 1, "env")
    both = load_settings(path, env=env, overrides={"worker_pool_size": 30, "consumer_name": "cli"})
    assert (both.worker_pool_size, both.max_retry, both.consumer_name) == (30, 1, "cli")


def test_overrides_by_name_or_key_and_none_means_not_given() -> None:
    settings = load_settings(
        env={"APP_MAX_RETRY": "4"},
        overrides={"app.worker_pool_size": "6", "max_retry": None, "schedule_interval": 42},
    )
    assert (settings.worker_pool_size, settings.max_retry, settings.schedule_interval) == (6, 4, 42.0)
    assert load_settings(env={}, overrides={"lease_timeout": "1m"}).lease_timeout == 60.0


def test_unknown_override_is_an_error() -> None:
    assert "'workers'" in one_line_error(env={}, overrides={"workers": 3})


def test_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"app": {"worker_pool_size": 10}, "redis": {"password": "pw"}})
    settings = load_settings(path, env={"APP_WORKER_POOL_SIZE": "", "REDIS_PASSWORD": ""})
    assert (settings.worker_pool_size, settings.redis_password) == (10, "pw")


def test_default_file_is_read_from_the_working_directory(tmp_path: Path) -> None:
    assert load_settings(env={}).worker_pool_size == 50
    (tmp_path / "configs").mkdir()
    write_config(tmp_path / "configs", {"app": {"worker_pool_size": 12}})
    assert load_settings(env={}).worker_pool_size == 12


def test_explicit_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    assert one_line_error(path="nope/config.json", env={}) == "config file nope/config.json does not exist"
    assert "is not a file" in one_line_error(path=str(tmp_path), env={})


def test_original_go_config_loads(tmp_path: Path) -> None:
    """A config.json of the Go service: its own app keys and sections are skipped, ours are read."""
    document = {
        "app": {
            "env": "prod", "log_level": "warn", "http_addr": ":8081", "crawler_grpc_addr": "crawler:50051",
            "schedule_interval": "10m", "new_item_duration": "1h", "guest_idle_timeout": "10m",
            "guest_heartbeat": "5m", "max_tasks_per_user": 3, "max_items_per_task": 300,
            "worker_pool_size": 20, "queue_capacity": 1000, "queue_batch_size": 100, "dedup_window": 3600,
            "rate_limit": 3, "rate_burst": 5, "proxy_cooldown": "10m", "max_tasks": 500,
            "jwt_secret": "jwt", "enable_redis_queue": True, "task_queue_stream": "goodshunter:task:queue",
            "task_queue_group": "scheduler_group",
        },
        "mysql": {"dsn": "root:pw@tcp(db:3306)/goodshunter"},
        "redis": {"addr": "redis:6379", "password": ""},
        "browser": {"headless": True},
        "email": {"smtp_port": 587},
        "security": {"jwt_secret": "x", "invite_code": ""},
        "database": {}, "jwt": {}, "server": {}, "crawler": {"anything": 1},
    }  # fmt: skip
    settings = load_settings(write_config(tmp_path, document), env={})
    assert settings.log_level == "warning"
    assert settings.schedule_interval == 600.0
    assert settings.worker_pool_size == 20
    assert (settings.redis_addr, settings.redis_password) == ("redis:6379", None)


@pytest.mark.parametrize("value", [True, False, "yes", None])
def test_enable_redis_queue_of_a_shared_config_is_ignored(tmp_path: Path, value: object) -> None:
    """The Go API's publish switch: a shared config.json that has it loads, whatever its value, and
    neither it nor APP_ENABLE_REDIS_QUEUE changes a setting (the daemon always consumes the stream)."""
    path = write_config(tmp_path, {"app": {"enable_redis_queue": value, "worker_pool_size": 7}})
    settings = load_settings(path, env={"APP_ENABLE_REDIS_QUEUE": "maybe"})
    assert settings == dataclasses.replace(Settings(), worker_pool_size=7)
    assert not hasattr(settings, "enable_redis_queue")


# --- the file itself ------------------------------------------------------------------------------------


def test_unknown_key_in_app_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"app": {"worker_pool": 5}})
    message = one_line_error(path=path, env={})
    assert message == (
        f"config file {path}: unknown key app.worker_pool (did you mean app.worker_pool_size?)"
    )


def test_all_unknown_keys_are_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"app": {"shedule_interval": "1m", "zzz": 1}, "redis": {"adr": "x:1"}})
    message = one_line_error(path=path, env={})
    assert "unknown keys" in message
    assert "app.shedule_interval (did you mean app.schedule_interval?)" in message
    assert "app.zzz" in message
    assert "redis.adr (did you mean redis.addr?)" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{", "invalid JSON at line 1 column 2"),
        ("[1, 2]", "must be a JSON object"),
        ('{"app": [1]}', '"app" must be a JSON object'),
        ('{"redis": "localhost"}', '"redis" must be a JSON object'),
        ('{"app": {"max_retry": 1, "max_retry": 2}}', "app.max_retry given more than once"),
    ],
)
def test_malformed_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    message = one_line_error(path=str(path), env={})
    assert message.startswith(f"config file {path}: ")
    assert expected in message


def test_null_sections_and_bom_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('\ufeff{"app": null, "redis": {"db": 2}}', encoding="utf-8")
    assert load_settings(str(path), env={}).redis_db == 2


# --- bad values -----------------------------------------------------------------------------------------

BAD_VALUES = [
    ("crawler_tls", "2", "must be true or false"),
    ("task_queue_stream", "has space", "must be non-empty text without spaces"),
    ("task_queue_group", "a b", "without spaces"),
    ("consumer_name", "my host", "without spaces"),
    ("metrics_host", "a host", "without spaces"),
    ("crawler_grpc_addr", "crawler", "must be host:port or a gRPC target"),
    ("crawler_grpc_addr", "crawler:0", "must be host:port"),
    ("crawler_grpc_addr", "dns:", "must be host:port or a gRPC target"),
    ("worker_pool_size", "abc", "must be an integer from 1 to 1024, got 'abc'"),
    ("worker_pool_size", "0", "must be an integer from 1 to 1024, got '0'"),
    ("worker_pool_size", "1025", "from 1 to 1024"),
    ("worker_pool_size", "2.5", "must be an integer"),
    ("processes", "0", "must be an integer from 1 to 64, got '0'"),
    ("processes", "65", "from 1 to 64"),
    ("crawler_attempts", "11", "from 1 to 10"),
    ("max_retry", "-1", "from 0 to 100"),
    ("max_deliveries", "0", "must be an integer ≥ 1"),
    ("breaker_failure_threshold", "x", "≥ 1"),
    ("metrics_port", "65536", "from 0 to 65535"),
    ("stream_maxlen", "0", "≥ 1"),
    ("dlq_maxlen", "-5", "≥ 1"),
    ("results_maxlen", "1e5", "must be an integer"),
    ("max_entry_bytes", "1023", "from 1024 to 16777216"),
    ("redis_db", "-1", "≥ 0"),
    ("schedule_interval", "5", "missing unit in duration '5'"),
    ("schedule_interval", "0", "must be a duration > 0, got '0'"),
    ("schedule_interval", "-1s", "must be a duration > 0"),
    ("crawler_deadline", "2 m", "unknown unit ' m'"),
    ("crawler_backoff_initial", "0s", "> 0"),
    ("crawler_backoff_max", "5sec", "unknown unit 'sec'"),
    ("retry_backoff_base", "-5s", "≥ 0"),
    ("retry_backoff_max", "1d", "unknown unit 'd'"),
    ("lease_timeout", "999ms", "must be a duration ≥ 1s, got '999ms'"),
    ("reclaim_interval", "0", "> 0"),
    ("breaker_open_duration", "soon", "invalid duration 'soon'"),
    ("shutdown_grace", "-1s", "≥ 0"),
    ("heartbeat_interval", "0s", "> 0"),
    ("trim_interval", "30", "missing unit"),
    ("seen_ttl", "7d", "unknown unit 'd'"),
    ("seen_items_per_task", "0", "must be an integer from 1 to 1000000"),
    ("crawler_tls_ca_file", "/no/such/ca.pem", "must be the path of an existing file"),
    ("log_format", "xml", "must be one of json, text, got 'xml'"),
    ("log_level", "verbose", "must be one of debug, info, warning, error"),
    ("redis_addr", "localhost", "must be host:port"),
    ("redis_addr", "localhost:99999", "port from 1 to 65535"),
    ("redis_url", "http://localhost:6379", "must start with redis://, rediss:// or unix://"),
    ("redis_url", "redis://", "must name a host"),
    ("redis_url", "redis://localhost:6379/zero", "database number"),
    ("redis_url", "redis://localhost:70000/0", "not a valid Redis URL"),
    ("redis_url", "unix://", "socket path"),
    ("task_store", "postgres", "must be one of redis, mysql"),
    ("max_items_per_task", "0", "must be an integer from 1 to 1000000"),
    ("mysql_dsn", "root:secret@db:3306", "no '/dbname' found) (value not shown)"),
    ("mysql_dsn", "root:secret@tcp(db:3306)/", "names no database"),
    ("mysql_dsn", "root:secret@udp(db:3306)/gh", "names a network other than tcp or unix"),
    ("mysql_dsn", "gh:p@ssw0rd/db", "names a network other than tcp or unix"),
    ("mysql_dsn", "gh@tcp(db)/gh?tls=true", "asks for tls"),
    ("email_smtp_host", "\t", "must be non-empty printable text"),
    ("email_smtp_port", "0", "from 1 to 65535"),
    ("email_smtp_user", "a\x00b", "must be non-empty printable text"),
    ("email_from_email", "\x07", "must be non-empty printable text"),
]


def test_bad_values_cover_every_setting_but_free_text() -> None:
    assert {name for name, _, _ in BAD_VALUES} == set(SPEC) - {"redis_password", "email_smtp_pass"}


@pytest.mark.parametrize(("name", "text", "expected"), BAD_VALUES)
def test_bad_environment_value_names_key_and_variable(name: str, text: str, expected: str) -> None:
    spec = SPEC[name]
    message = one_line_error(env={spec.env: text})
    assert message.startswith(f"{spec.key} (env {spec.env}): ")
    assert expected in message


@pytest.mark.parametrize(("name", "text", "expected"), BAD_VALUES)
def test_bad_file_value_names_key_and_file(name: str, text: str, expected: str, tmp_path: Path) -> None:
    spec = SPEC[name]
    section, key = spec.key.split(".")
    path = write_config(tmp_path, {section: {key: text}})
    message = one_line_error(path=path, env={})
    assert message.startswith(f"{spec.key} (file {path}): ")
    assert expected in message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("worker_pool_size", "8", None),  # a number in a string is still a number
        ("worker_pool_size", 8.0, "must be an integer"),
        ("worker_pool_size", True, "must be an integer"),
        ("crawler_tls", 1, None),
        ("crawler_tls", 2, "must be true or false"),
        ("crawler_tls", None, "must be true or false"),
        ("schedule_interval", 300, 'must be a Go duration string such as "5m"'),
        ("task_queue_stream", 5, "must be non-empty text"),
        ("log_level", ["info"], "must be one of"),
        ("crawler_grpc_addr", None, "must be host:port"),
    ],
)
def test_json_types(tmp_path: Path, key: str, value: object, expected: str | None) -> None:
    path = write_config(tmp_path, {"app": {key: value}})
    if expected is None:
        load_settings(path, env={})
    else:
        assert expected in one_line_error(path=path, env={})


def test_bad_override_names_the_override() -> None:
    message = one_line_error(env={}, overrides={"worker_pool_size": 0})
    assert message == "app.worker_pool_size (override): must be an integer from 1 to 1024, got 0"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"APP_RETRY_BACKOFF_BASE": "10m"},
            "app.retry_backoff_base (env APP_RETRY_BACKOFF_BASE) = 10m must be ≤ "
            "app.retry_backoff_max (default) = 5m",
        ),
        (
            {"APP_CRAWLER_BACKOFF_INITIAL": "10s", "APP_CRAWLER_BACKOFF_MAX": "1s"},
            "app.crawler_backoff_initial (env APP_CRAWLER_BACKOFF_INITIAL) = 10s must be ≤ "
            "app.crawler_backoff_max (env APP_CRAWLER_BACKOFF_MAX) = 1s",
        ),
        (
            {"APP_LEASE_TIMEOUT": "5s"},
            "app.reclaim_interval (default) = 5s must be < app.lease_timeout (env APP_LEASE_TIMEOUT) = 5s",
        ),
    ],
)
def test_cross_field_rules_name_both_keys(env: dict[str, str], expected: str) -> None:
    assert one_line_error(env=env) == expected


def test_ca_file_without_tls_names_both_keys(ca_file: str) -> None:
    message = one_line_error(env={"APP_CRAWLER_TLS_CA_FILE": ca_file})
    assert "app.crawler_tls_ca_file (env APP_CRAWLER_TLS_CA_FILE) is set" in message
    assert "app.crawler_tls (default) is false" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("True", True), ("1", True), ("yes", True), ("YES", True),
     ("false", False), ("FALSE", False), ("0", False), ("no", False), ("No", False)],
)  # fmt: skip
def test_boolean_words(text: str, expected: bool) -> None:
    assert load_settings(env={"APP_CRAWLER_TLS": text}).crawler_tls is expected


def test_consumer_name_empty_in_file_means_host_name(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"app": {"consumer_name": ""}})
    assert load_settings(path, env={}).consumer_name == socket.gethostname()


# --- the Settings object --------------------------------------------------------------------------------


def test_settings_are_frozen_and_checked_when_built_directly() -> None:
    settings = Settings(worker_pool_size=4, schedule_interval=60)
    assert settings.schedule_interval == 60.0
    assert isinstance(settings.schedule_interval, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.worker_pool_size = 5  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"^app\.worker_pool_size: must be an integer from 1 to 1024"):
        dataclasses.replace(settings, worker_pool_size=0)
    with pytest.raises(ConfigError, match=r"app\.retry_backoff_base = 10m must be ≤ app\.retry_backoff_max"):
        Settings(retry_backoff_base=600)


def test_lease_renew_interval_is_a_third_of_the_lease() -> None:
    assert load_settings(env={"APP_LEASE_TIMEOUT": "45s"}).lease_renew_interval == 15.0


def test_masked_is_keyed_by_config_key_and_printable() -> None:
    masked = load_settings(env={"APP_SCHEDULE_INTERVAL": "90s"}).masked()
    assert list(masked) == [spec.key for spec in SPECS]
    assert masked["app.schedule_interval"] == "1m30s"
    assert masked["app.worker_pool_size"] == 50
    assert masked["redis.password"] is None
    json.dumps(masked)


PASSWORD = "Tr0ub4dor&3-secret"


@pytest.mark.parametrize(
    "env",
    [
        {"REDIS_PASSWORD": PASSWORD},
        {"REDIS_URL": f"redis://:{PASSWORD}@cache:6379/1"},
        {"REDIS_URL": f"redis://admin:{quote(PASSWORD, safe='')}@cache:6379/1"},
        {"REDIS_URL": f"rediss://cache:6379/1?password={quote(PASSWORD, safe='')}"},
        {"REDIS_URL": f"unix://:{PASSWORD}@/run/redis.sock?db=1", "REDIS_PASSWORD": PASSWORD},
    ],
)
def test_secrets_never_shown(env: dict[str, str]) -> None:
    settings = load_settings(env=env)
    for shown in (repr(settings), str(settings), json.dumps(settings.masked()), settings.redis_target()):
        assert PASSWORD not in shown
        assert quote(PASSWORD, safe="") not in shown
    assert "***" in repr(settings)
    assert PASSWORD in settings.secrets()


def test_bad_redis_url_error_does_not_show_the_password() -> None:
    message = one_line_error(env={"REDIS_URL": f"redis://:{PASSWORD}@cache:notaport/0"})
    assert PASSWORD not in message
    assert "redis://***@cache:notaport/0" in message


def test_bad_password_type_error_does_not_show_it(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"redis": {"password": 123456789}})
    message = one_line_error(path=path, env={})
    assert (
        message
        == f"redis.password (file {path}): must be a string (value not shown), got a value of type int"
    )


@pytest.mark.parametrize(
    ("env", "target"),
    [
        ({}, "redis://localhost:6379/0"),
        ({"REDIS_ADDR": "10.0.0.5:6380", "REDIS_DB": "2"}, "redis://10.0.0.5:6380/2"),
        ({"REDIS_URL": "redis://u:p@cache/3"}, "redis://cache:6379/3"),
        ({"REDIS_URL": "redis://cache:7000", "REDIS_DB": "4"}, "redis://cache:7000/4"),
        ({"REDIS_URL": "rediss://:p@cache:7000/1?db=5"}, "rediss://cache:7000/5"),
        ({"REDIS_URL": "redis://[::1]:7000/0"}, "redis://[::1]:7000/0"),
        ({"REDIS_URL": "unix://:p@/run/redis.sock?db=2"}, "unix:///run/redis.sock?db=2"),
    ],
)
def test_redis_target(env: dict[str, str], target: str) -> None:
    assert load_settings(env=env).redis_target() == target


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://:pw@host:6379/0", "redis://***@host:6379/0"),
        ("connect rediss://user:pw@host:6379 failed", "connect rediss://***@host:6379 failed"),
        ("redis://:p@ss@host/0", "redis://***@host/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix://:pw@/tmp/r.sock?db=0", "unix://***@/tmp/r.sock?db=0"),
        ("redis://host/0?password=pw&db=1", "redis://host/0?password=***&db=1"),
        ("a@b.com and http://x/y", "a@b.com and http://x/y"),
        ("two: redis://:a@h1 redis://:b@h2", "two: redis://***@h1 redis://***@h2"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


# --- generated documentation stays in step -----------------------------------------------------------


def test_configuration_doc_has_the_current_table() -> None:
    doc = (ROOT / "docs" / "CONFIGURATION.md").read_text(encoding="utf-8")
    assert reference_markdown() in doc, (
        "docs/CONFIGURATION.md is out of date; paste the output of "
        "python -c 'from scheduler.config.docs import reference_markdown as r; print(r())'"
    )


def test_example_config_has_every_key_with_its_default() -> None:
    path = ROOT / "configs" / "config.example.json"
    assert json.loads(path.read_text(encoding="utf-8")) == example_document()
    assert load_settings(str(path), env={}) == Settings()


# --- real Redis -----------------------------------------------------------------------------------------

REDIS_PASSWORD = "p@ss:w/rd with space"


@pytest.fixture(scope="module")
def secured_redis() -> Iterator[RedisServer]:
    with RedisServer(password=REDIS_PASSWORD) as server:
        yield server


def test_redis_client_from_url_with_password(secured_redis: RedisServer) -> None:
    url = f"redis://:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1:{secured_redis.port}/1"
    with load_settings(env={"REDIS_URL": url}).redis_client(client_name="cfg-test") as client:
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.client_getname() == "cfg-test"
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["db"], kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1, 30.0, 5.0)
        assert kwargs["health_check_interval"] == 30


def test_redis_client_from_addr_and_password(secured_redis: RedisServer) -> None:
    env = {"REDIS_ADDR": f"127.0.0.1:{secured_redis.port}", "REDIS_PASSWORD": REDIS_PASSWORD, "REDIS_DB": "2"}
    with load_settings(env=env).redis_client() as client:
        assert client.ping()
        assert client.connection_pool.connection_kwargs["db"] == 2


def test_url_without_password_takes_redis_password(secured_redis: RedisServer) -> None:
    env = {"REDIS_URL": f"redis://127.0.0.1:{secured_redis.port}/0", "REDIS_PASSWORD": REDIS_PASSWORD}
    with load_settings(env=env).redis_client() as client:
        assert client.ping()


@pytest.mark.parametrize("password_env", ["REDIS_PASSWORD", "REDIS_URL"])
def test_wrong_password_is_a_clear_error(secured_redis: RedisServer, password_env: str) -> None:
    wrong = "not-the-password"
    if password_env == "REDIS_URL":
        env = {"REDIS_URL": f"redis://:{wrong}@127.0.0.1:{secured_redis.port}/0"}
    else:
        env = {"REDIS_ADDR": f"127.0.0.1:{secured_redis.port}", "REDIS_PASSWORD": wrong}
    with load_settings(env=env).redis_client() as client, pytest.raises(redis.AuthenticationError) as caught:
        client.ping()
    assert "password" in str(caught.value)
    assert wrong not in str(caught.value)


def test_missing_password_error_says_so(secured_redis: RedisServer) -> None:
    env = {"REDIS_ADDR": f"127.0.0.1:{secured_redis.port}"}
    with load_settings(env=env).redis_client() as client, pytest.raises(redis.AuthenticationError) as caught:
        client.ping()
    assert "Authentication required" in str(caught.value)


@pytest.mark.parametrize(
    ("error", "calls"),
    [
        (redis.ConnectionError("reset"), 4),
        (redis.TimeoutError("slow"), 4),
        (redis.AuthenticationError("no"), 1),
    ],
)
def test_client_retries_connection_errors_but_not_a_refused_password(error: Exception, calls: int) -> None:
    with load_settings(env={}).redis_client() as client:
        retry = client.connection_pool.connection_kwargs["retry"]
    attempts: list[int] = []

    def do() -> None:
        attempts.append(1)
        raise error

    with pytest.raises(type(error)):
        retry.call_with_retry(do, lambda *_: None)
    assert len(attempts) == calls


def test_redis_client_over_a_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    args = [
        find_redis_server(),
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--dir",
        str(tmp_path),
        "--save",
        "",
    ]
    server = subprocess.Popen([*args, "--requirepass", "pw"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        settings = load_settings(env={"REDIS_URL": f"unix://:pw@{sock}?db=3"})
        with settings.redis_client() as client:
            assert client.ping()
            assert client.connection_pool.connection_kwargs["db"] == 3
        assert settings.redis_target() == f"unix://{sock}?db=3"
    finally:
        server.terminate()
        server.wait(10)


def test_go_dsn_and_smtp_password_are_secrets_and_other_go_keys_of_those_sections_load(
    tmp_path: Path,
) -> None:
    document = {
        "app": {"task_store": "mysql", "max_items_per_task": 300},
        "mysql": {"dsn": "gh:p@ss/w0rd@tcp(db.internal:3307)/goodshunter?parseTime=true&loc=Local",
                  "max_open_conns": 20},
        "email": {"smtp_host": "smtp.example.com", "smtp_pass": "mail-secret", "from_email": "a@example.com",
                  "template": "x"},
    }  # fmt: skip
    settings = load_settings(write_config(tmp_path, document), env={})
    target = parse_go_dsn(settings.mysql_dsn or "")
    assert (target.user, target.password, target.host, target.port) == (
        "gh",
        "p@ss/w0rd",
        "db.internal",
        3307,
    )
    assert target.database == "goodshunter" and target.params["parseTime"] == "true"
    shown = json.dumps(settings.masked()) + repr(settings) + repr(target)
    assert "p@ss" not in shown and "mail-secret" not in shown
    assert settings.masked()["mysql.dsn"] == "gh:***@tcp(db.internal:3307)/goodshunter"
    assert set(settings.secrets()) == {"p@ss/w0rd", "mail-secret"}


def test_mysql_store_needs_a_dsn_and_mail_needs_host_and_sender() -> None:
    assert "needs mysql.dsn (env MYSQL_DSN)" in one_line_error(env={"APP_TASK_STORE": "mysql"})
    assert "go together" in one_line_error(env={"EMAIL_SMTP_HOST": "smtp.example.com"})
