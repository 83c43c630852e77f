"""The demo's sample searches, and what the scripted ones show.

A script is a fake-crawler directive (CONTRACT §4) appended to the keyword after ``;``: the stub reads it
and fails, or finds nothing, as the real crawler would on a blocked page or an empty search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from scheduler.tasks.registry import Platform, TaskSpec

Expect = Literal["success", "no_items", "dead_letter"]


@dataclass(frozen=True)
class Sample:
    search: str
    platform: Platform
    min_price: int
    max_price: int
    script: str = ""  # fake-crawler directives (CONTRACT §4), appended to the keyword after ';'
    expect: Expect = "success"
    shows: str = ""

    @property
    def keyword(self) -> str:
        return f"{self.search};{self.script}" if self.script else self.search


# The scripted ones come early so that even a small --tasks shows a retry and a dead letter.
SAMPLES: Final = (
    Sample("nintendo switch", "mercari", 15_000, 35_000),
    Sample(
        "vintage camera", "yahoo_auction", 3_000, 30_000, script="fail=UNKNOWN*4",
        shows="the crawler fails its first 4 calls (as the real one does when a page is blocked): the "
        "client retries within the crawl, the queue requeues it with back-off, and the retry succeeds",
    ),
    Sample("ricoh gr iii", "mercari", 60_000, 120_000),
    Sample(
        "leica m6", "yahoo_auction", 150_000, 400_000, script="fail=INVALID_ARGUMENT", expect="dead_letter",
        shows="the crawler rejects the request (a permanent error): dead-lettered at once, never retried",
    ),
    Sample("sony a7c", "mercari", 120_000, 200_000),
    Sample(
        "famicom disk system", "yahoo_auction", 2_000, 15_000, script="no_items", expect="no_items",
        shows="an empty search: a success, recorded as no_items",
    ),
    Sample("pokemon card 151", "mercari", 500, 8_000),
    Sample("macbook air m2", "yahoo_auction", 70_000, 130_000),
    Sample("bandai gundam mg", "mercari", 3_000, 12_000),
    Sample("nikon fm2", "yahoo_auction", 30_000, 80_000),
)  # fmt: skip


def samples(count: int) -> list[Sample]:
    """``count`` samples; past the list, the plain searches again with a model number (``sony a7c 2``)."""
    plain = [s for s in SAMPLES if not s.script]
    out = list(SAMPLES[:count])
    for i in range(count - len(out)):
        base = plain[i % len(plain)]
        out.append(
            Sample(f"{base.search} {2 + i // len(plain)}", base.platform, base.min_price, base.max_price)
        )
    return out


def sample_specs(chosen: list[Sample], interval_s: float) -> list[TaskSpec]:
    return [
        TaskSpec(
            task_id=n,
            keyword=s.keyword,
            platform=s.platform,
            min_price=s.min_price,
            max_price=s.max_price,
            interval_s=interval_s,
        )
        for n, s in enumerate(chosen, start=1)
    ]
