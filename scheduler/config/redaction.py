"""Secrets never shown: credentials inside URLs and the mask every secret is shown as."""

from __future__ import annotations

import re
from typing import Final

MASK: Final = "***"
_SECRET_IN_URL: Final = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#]*@")
_SECRET_IN_QUERY: Final = re.compile(r"(?P<name>[?&]password=)[^&#\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the credentials of any URL in it (``user:pass@``, ``?password=``) shown as ``***``."""
    if "://" not in text and "=" not in text:  # neither pattern can match: skip both regexes (hot path)
        return text
    return _SECRET_IN_QUERY.sub(rf"\g<name>{MASK}", _SECRET_IN_URL.sub(rf"\g<scheme>{MASK}@", text))
