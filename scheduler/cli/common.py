"""What every subcommand shares: settings, the Redis client, errors as one clear line and an exit code."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import redis

from scheduler.config.load import load_settings
from scheduler.config.settings import Settings
from scheduler.errors import ConfigError, InvalidTaskError, QueueConnectionError, SchedulerError
from scheduler.taskqueue import Consumer

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 3

Command = Callable[[argparse.Namespace], int]
Subparsers = Any  # argparse's _SubParsersAction is private


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


def report_error(exc: CliError) -> int:
    print(f"goodshunter-scheduler: error: {exc}", file=sys.stderr)
    return exc.code


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="PATH", help="config.json (default: configs/config.json if present)"
    )


def settings_from(args: argparse.Namespace, **overrides: object) -> Settings:
    try:
        return load_settings(getattr(args, "config", None), overrides=overrides)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def redis_from(settings: Settings) -> redis.Redis:
    client = settings.redis_client(client_name="goodshunter-scheduler-cli")
    try:
        client.ping()
    except redis.AuthenticationError:
        raise CliError(f"Redis at {settings.redis_target()} refused the password") from None
    except redis.RedisError as exc:
        raise CliError(f"Redis at {settings.redis_target()} is unreachable ({type(exc).__name__})") from None
    return client


def consumer_for(settings: Settings, client: redis.Redis) -> Consumer:
    return Consumer(
        client,
        None,
        settings.task_queue_stream,
        settings.task_queue_group,
        settings.consumer_name,
        max_entry_bytes=settings.max_entry_bytes,
        dlq_maxlen=settings.dlq_maxlen,
    )


Handler = Callable[[argparse.Namespace, Settings, redis.Redis], int]


def connected(handler: Handler) -> Command:
    """A subcommand that needs Redis: settings from --config and the environment, a Redis that answers,
    the package's errors as one line and an exit code."""

    def run(args: argparse.Namespace) -> int:
        settings = settings_from(args)
        client = redis_from(settings)
        return guard(lambda: handler(args, settings, client))

    return run


def guard(call: Callable[[], int]) -> int:
    """Turn the package's errors into one clear line and the right exit code."""
    try:
        return call()
    except InvalidTaskError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except QueueConnectionError as exc:
        raise CliError(str(exc)) from None
    except redis.AuthenticationError:
        raise CliError("Redis refused the password") from None
    except redis.RedisError as exc:
        raise CliError(f"Redis error: {type(exc).__name__}: {exc}") from None
    except SchedulerError as exc:
        raise CliError(str(exc)) from None


def print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def task_id_arg(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"task id must be a whole number, got {text!r}") from None
    if not 1 <= value <= 2**63 - 1:
        raise argparse.ArgumentTypeError(f"task id must be in 1..2^63-1, got {value}")
    return value
