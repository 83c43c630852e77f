"""The fake crawler server (placeholder until the crawler issue lands)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    print("goodshunter-crawler-stub: not yet", file=sys.stderr)
    return 2
