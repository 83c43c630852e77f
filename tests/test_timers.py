"""The timer thread: a job that Redis refuses (the stream deleted under the daemons) is one warning line
and retried, never a traceback; a failing job never stops the others."""

from __future__ import annotations

import logging
import threading

import pytest
import redis

from scheduler.daemon.timers import Job, TimerThread
from scheduler.taskqueue import Consumer, keys
from tests.e2e.support import wait_until


def test_a_refused_job_is_one_line_and_retried_and_the_others_run_on(
    r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = Consumer(r, None, keys.DEFAULT_STREAM, keys.DEFAULT_GROUP, "c")  # no group: NOGROUP
    calls = {"renew": 0, "other": 0}

    def renew() -> None:
        calls["renew"] += 1
        consumer.extend(["1-1"])

    def other() -> None:
        calls["other"] += 1

    stop = threading.Event()
    timer = TimerThread(
        "t", [Job("lease renewal", lambda: 0.01, renew), Job("other", lambda: 0.01, other)], stop
    )
    with caplog.at_level(logging.INFO, logger="scheduler.daemon.timers"):
        timer.start()
        wait_until(lambda: calls["renew"] >= 2 and calls["other"] >= 3, 5)
        stop.set()
        timer.join(2)
    refused = [rec for rec in caplog.records if "Redis refused" in rec.getMessage()]
    assert refused and all(rec.exc_info is None and rec.levelno == logging.WARNING for rec in refused)
    assert "NOGROUP" in refused[0].getMessage()
    assert not any(rec.exc_info for rec in caplog.records)
