"""``goodshunter-scheduler`` that dies by SIGKILL right after its N-th crawl wrote GoodsHunter's rows and
events (``DIE_AFTER_RECORD=N``), before the entry is acknowledged: the worst moment for a crawl that runs
twice. Only the tests use it."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from scheduler.cli import main
from scheduler.results import goodshunter

_original = goodshunter.GoodsHunterResults.record
_calls = [0]


def _record(self: goodshunter.GoodsHunterResults, *args: Any, **kwargs: Any) -> goodshunter.Merged:
    merged = _original(self, *args, **kwargs)
    _calls[0] += 1
    if _calls[0] == int(os.environ.get("DIE_AFTER_RECORD", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
    return merged


goodshunter.GoodsHunterResults.record = _record  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
