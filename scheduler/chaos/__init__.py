"""The fault harness: ``python -m scheduler.chaos`` (``./dev chaos``).

Starts a private Redis, the fake crawler and N daemons, submits tasks while a seeded random schedule of
faults runs (connections killed, a misbehaving proxy, pauses, kill -9, SIGSTOP, SIGTERM, crawler and
Redis restarts, trims), then checks, like Jepsen's total-queue checker, that every acknowledged submit
ended exactly once within a bound computed from the run, that nothing is stuck, pending or crashed.
"""

from scheduler.chaos.runner import SCENARIOS, Options, Run

__all__ = ["SCENARIOS", "Options", "Run"]
