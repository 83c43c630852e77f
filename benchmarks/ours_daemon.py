"""Fallback launcher for our daemon when ``python -m scheduler run`` cannot start in the working tree (a
module another engineer is still writing): the same ``Daemon``, settings from the same environment."""

from __future__ import annotations

import logging
import sys

from scheduler.config.load import load_settings
from scheduler.daemon.app import Daemon

if __name__ == "__main__":
    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr)
    sys.exit(Daemon(settings).run())
