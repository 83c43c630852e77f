"""Loading: defaults, then ``config.json``, then environment variables, then overrides; validated once."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from scheduler.config.settings import BY_KEY, BY_NAME, SPECS, Settings, check_relations
from scheduler.errors import ConfigError

DEFAULT_CONFIG_PATH: Final = "configs/config.json"

# Keys the Go service reads from the same "app" section: a shared config.json must load, so these are
# skipped; anything else unknown in "app" or "redis" is a typo and stops start-up.
GO_ONLY_APP_KEYS: Final = frozenset(
    {
        "env", "http_addr", "new_item_duration", "guest_idle_timeout", "guest_heartbeat",
        "max_tasks_per_user", "queue_capacity", "queue_batch_size", "jwt_secret",
        "rate_limit", "rate_burst", "dedup_window", "proxy_cooldown", "max_tasks",
        "enable_redis_queue",  # the Go API's switch for publishing tasks; the daemon always consumes
    }
)  # fmt: skip


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
        named = BY_NAME.get(name) or BY_KEY.get(name)
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
    check_relations(values, where)
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
            if key in BY_KEY:
                found[key] = value
            elif not (section == "app" and name in GO_ONLY_APP_KEYS) and section in ("app", "redis"):
                unknown.append(key)
    if unknown:
        raise ConfigError(f"config file {path}: unknown key{'s' * (len(unknown) > 1)} " + _suggest(unknown))
    return found


def _suggest(unknown: list[str]) -> str:
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(BY_KEY), n=1, cutoff=0.75)
        shown = key if key.isprintable() else repr(key)  # one line, whatever the file holds
        named.append(f"{shown} (did you mean {close[0]}?)" if close else shown)
    return ", ".join(named)
