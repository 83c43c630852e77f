"""The fuzz run's checks: what the daemon did, read from the fake crawler's calls log, the dead letters
and the daemon's own log, turned into figures and pass/fail checks.

Every entry sent is either a registered execute or poison, so the oracle is exact: each valid execute
crawled once and never dead-lettered, each poison entry dead-lettered once, no other crawl, nothing
pending, the daemon up with a flat resident memory and a clean exit, and no whole payload (more than
``SHOWN_MAX`` bytes of one) and no traceback in its log.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from scheduler.chaos.fuzz_feed import Sent

SHOWN_MAX: Final = 200  # the daemon's log may hold no more than this much of a payload's start
RSS_SLACK_KIB: Final = 16 * 1024


@dataclass(frozen=True)
class Observed:
    """What was read once the run had settled."""

    crawled: Counter[int]  # successful crawler calls by task id
    letters: Counter[str]  # dead letters by original entry id
    pending: int
    alive: bool
    exit_code: int  # on SIGTERM
    rss: list[int]  # KiB, sampled while feeding
    rss_end: int | None
    blob: str  # the daemon's log, see log_blob_text


def figures(sent: Sent, seen: Observed) -> dict[str, Any]:
    """The run's counts, each one a check's input; the keys are those ``fuzz.table`` shows."""
    good_tasks = Counter(sent.good.values())
    crawled, letters, bad = seen.crawled, seen.letters, sent.bad
    rss_start = seen.rss[0] if seen.rss else None
    rss_peak = max([*seen.rss, seen.rss_end or 0]) if seen.rss else seen.rss_end
    return {
        "sent_good": len(sent.good),
        "sent_bad": len(bad),
        "skipped_valid_mutations": sent.skipped_valid,
        "crawled": sum(1 for t in good_tasks if crawled[t] >= 1),
        "not_crawled": sum(1 for t in good_tasks if crawled[t] == 0),
        "duplicate_crawls": sum(max(0, crawled[t] - 1) for t in good_tasks),
        "unexpected_crawls": sum(n for t, n in crawled.items() if t not in good_tasks),
        "dead_lettered": sum(1 for i in bad if letters[i] >= 1),
        "missing_dead_letters": sum(1 for i in bad if letters[i] == 0),
        "dead_lettered_twice": sum(1 for i in bad if letters[i] > 1),
        "good_dead_lettered": sum(1 for i in sent.good if letters[i]),
        "pending": seen.pending,
        "alive": seen.alive,
        "exit_code": seen.exit_code,
        "rss_start_kib": rss_start,
        "rss_end_kib": seen.rss_end,
        "rss_peak_kib": rss_peak,
        "payloads_in_log": payloads_in_log(seen.blob, list(bad.values())),
        "tracebacks": seen.blob.count("Traceback (most recent call last)"),
    }


def checks(result: dict[str, Any]) -> dict[str, bool]:
    """Each check of the run by name, from its ``figures``."""
    rss_start, rss_end = result["rss_start_kib"], result["rss_end_kib"]
    rss_flat = rss_start is not None and rss_end is not None and rss_end <= rss_start * 1.25 + RSS_SLACK_KIB
    return {
        "daemon still up": result["alive"],
        "clean exit on SIGTERM": result["exit_code"] == 0,
        "RSS flat": rss_flat,
        "every bad entry dead-lettered once": result["missing_dead_letters"] == 0
        and result["dead_lettered_twice"] == 0,
        "no good entry dead-lettered": result["good_dead_lettered"] == 0,
        "every valid execute crawled once": result["not_crawled"] == 0 and result["duplicate_crawls"] == 0,
        "no unexpected crawl": result["unexpected_crawls"] == 0,
        "nothing pending": result["pending"] == 0,
        "no payload in the log": result["payloads_in_log"] == 0,
        "no traceback in the log": result["tracebacks"] == 0,
    }


def crawled_tasks(path: Path) -> Counter[int]:
    """Successful crawler calls by task id, from the fake crawler's calls log."""
    if not path.exists():
        return Counter()
    calls: Counter[int] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError, KeyError):
            call = json.loads(line)
            if call["code"] == "OK":
                calls[int(call["task_id"])] += 1
    return calls


def log_blob(path: Path) -> str:
    """The daemon's log file as ``log_blob_text`` reads it."""
    return log_blob_text(path.read_text(encoding="utf-8", errors="replace"))


def log_blob_text(raw: str) -> str:
    """The daemon's log as written, and with each JSON line's strings unescaped."""
    decoded: list[str] = []

    def strings(value: Any) -> None:
        if isinstance(value, str):
            decoded.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                strings(item)
        elif isinstance(value, list):
            for item in value:
                strings(item)

    for line in raw.splitlines():
        with contextlib.suppress(ValueError):
            strings(json.loads(line))
    return raw + "\n" + "\n".join(decoded)


def payloads_in_log(blob: str, payloads: Sequence[bytes]) -> int:
    """How many payloads the log shows more than ``SHOWN_MAX`` characters of, in any printed form."""
    found = 0
    for data in payloads:
        if len(data) <= SHOWN_MAX:
            continue
        text = data.decode("utf-8", "replace")
        forms = {text, repr(data)[2:-1], json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
        if any(form[: SHOWN_MAX + 1] in blob for form in forms):
            found += 1
    return found
