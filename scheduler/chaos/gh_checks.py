"""The checks of a GoodsHunter run, computed from what the database, the mail outbox and the SMTP sink
hold after the drain; none is a hard-coded expectation.

- *lost*: an acknowledged execute with no crawl recorded after it (a ``last_run_at`` write, in the
  audit): each execute is matched to the first unmatched recorded crawl after it, per task.
- *dup rows*: a ``task_items`` link or an ``items`` source id stored twice; *over cap*: tasks with more
  links than ``app.max_items_per_task``.
- *dup events*: an item announced new twice for one task, or more price drops of an item from a price
  than the harness raised it to that price (see gh_feed).
- *dup mails* / *missing* / *stray*: the mails accepted by the sink against the outbox's events, by the
  identity the mailer uses, the Message-ID made from the entry id (mail_render): each event once. A
  second copy whose first was accepted just before its sender's ``kill -9`` (within KILL_WINDOW_S, over
  the victim's SMTP connection where that was seen) is the mailer's documented duplicate window: the
  server had the mail, the receipt was not yet written, so the entry was mailed again, with the same
  Message-ID. Counted apart, as *resent at kill*, not as a failure; any other second copy fails.
- *baseline mails*: an event written before its task's baseline was recorded; *misdirected*: an event
  for a task with notifications off, or to another address than the task's user's.

Where the kills landed: for each ``kill -9``, the entries pending to the victim at that moment whose
victim's crawl had ended and whose task's ``last_run_at`` was written after that crawl and before the
kill are that kill's hits: every database write and the outbox events done, the ack not. Kills with a
hit are counted *in window*; kills without one but with an entry whose transaction had committed and
whose ``last_run_at`` was not yet written, *mid writes*.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from scheduler.chaos.checker import Call
from scheduler.chaos.faults import KILL_WINDOW_S
from scheduler.chaos.gh_db import Audit, TaskRow
from scheduler.chaos.gh_feed import Raise
from scheduler.chaos.gh_mail import Mail
from scheduler.chaos.producer import Submit
from scheduler.results.mail_render import render

ACCEPT_LAG_S = 0.25
# the columns of the scenario's table, in order; CHECKS must be 0, the others are figures
COLUMNS = ("recorded", "lost", "dup rows", "over cap", "events", "dup events", "mails", "dup mails",
           "resent at kill", "missing", "stray", "baseline mails", "misdirected", "kills", "aimed",
           "in window", "mid writes", "revived")  # fmt: skip
CHECKS = ("lost", "dup rows", "over cap", "dup events", "dup mails", "missing", "stray", "baseline mails",
          "misdirected")  # fmt: skip


@dataclass(frozen=True)
class Kill:
    at: float
    victim: str
    ports: frozenset[int]  # the victim's connections to the crawler
    smtp_ports: frozenset[int]  # ... and to the SMTP sink
    pending: tuple[tuple[str, int], ...]  # (entry id, task id) of the entries pending to it
    aimed: str = ""  # the crawl an aimed kill was for (gh_run.FastKill)


@dataclass
class Observed:
    submits: list[Submit]
    audit: dict[int, list[Audit]]
    rows: list[TaskRow]
    duplicate_rows: list[str]
    links: dict[int, int]
    max_items: int
    outbox: dict[str, dict[str, str]]
    mails: list[Mail]
    raises: list[Raise]
    kills: list[Kill]
    calls: list[Call]
    revived: int = 0


@dataclass
class Result:
    figures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLUMNS, 0))
    details: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def fail(self, check: str, note: str) -> None:
        self.figures[check] += 1
        if len(self.details[check]) < 20:
            self.details[check].append(note)


def gh_check(o: Observed) -> Result:
    r = Result()
    _lost(r, o)
    for note in o.duplicate_rows:
        r.fail("dup rows", note)
    for task, n in sorted(o.links.items()):
        if n > o.max_items:
            r.fail("over cap", f"task {task}: {n} links, the cap is {o.max_items}")
    _events(r, o)
    _mails(r, o)
    _kills(r, o)
    r.figures["revived"] = o.revived
    return r


def _recorded(audit: list[Audit]) -> list[float]:
    return [a.at for a in audit if a.kind != "linked"]


def _lost(r: Result, o: Observed) -> None:
    executes: dict[int, list[Submit]] = defaultdict(list)
    for s in o.submits:
        if s.entry_id and s.action == "execute":
            executes[s.task_id].append(s)
    for task, mine in sorted(executes.items()):
        recorded = sorted(_recorded(o.audit.get(task, [])))
        r.figures["recorded"] += len(recorded)
        j = 0
        for s in sorted(mine, key=lambda s: s.ts):
            while j < len(recorded) and recorded[j] <= s.ts:
                j += 1
            if j < len(recorded):
                j += 1
            else:
                r.fail("lost", f"task {task}: execute {s.entry_id} at {s.ts:.3f}, no crawl recorded after it")


def _entry_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def _events(r: Result, o: Observed) -> None:
    rows = {row.task_id: row for row in o.rows}
    baseline = {
        t: min((a.at for a in audit if a.kind == "baseline"), default=None) for t, audit in o.audit.items()
    }
    raised = Counter((x.task_id, x.source_id, str(x.price)) for x in o.raises)
    news: Counter[tuple[int, str]] = Counter()
    drops: Counter[tuple[int, str, str]] = Counter()
    for entry_id, f in sorted(o.outbox.items(), key=lambda e: _entry_ms(e[0])):
        task, kind, source = int(f.get("task_id", "0")), f.get("kind", ""), f.get("source_id", "")
        r.figures["events"] += 1
        base = baseline.get(task)
        if base is None or _entry_ms(entry_id) < int(base * 1000):
            r.fail("baseline mails", f"task {task}: {kind} event {entry_id} before its baseline ({base})")
        row = rows.get(task)
        if row is None or not row.notify or f.get("to") != row.email:
            why = (
                "no such task" if row is None else ("notifications off" if not row.notify else "not its user")
            )
            r.fail("misdirected", f"task {task}: {kind} event {entry_id} to {f.get('to')!r} ({why})")
        if kind == "new_item":
            news[task, source] += 1
            if news[task, source] > 1:
                r.fail("dup events", f"task {task}: {source} announced new again in {entry_id}")
        elif kind == "price_drop":
            key = (task, source, f.get("old_price", ""))
            drops[key] += 1
            if drops[key] > raised[key]:
                r.fail("dup events", f"task {task}: drop of {source} from {key[2]} in {entry_id}, "
                                     f"{drops[key]} drops for {raised[key]} raises")  # fmt: skip


def _mails(r: Result, o: Observed) -> None:
    expected: dict[str, str] = {}
    for entry_id, f in o.outbox.items():
        try:
            expected[str(render(f, entry_id)["Message-ID"])] = entry_id
        except ValueError as exc:  # the mailer acknowledges such an entry unsent
            r.fail("missing", f"event {entry_id} cannot be mailed: {exc}")
    copies: dict[str, list[Mail]] = defaultdict(list)
    for mail in o.mails:
        copies[mail.message_id].append(mail)
    r.figures["mails"] = len(o.mails)
    for message_id, entry_id in sorted(expected.items(), key=lambda e: e[1]):
        if message_id not in copies:
            r.fail("missing", f"event {entry_id} ({o.outbox[entry_id].get('kind')}) never mailed")
    for message_id, mails in copies.items():
        if message_id not in expected:
            r.fail("stray", f"mail {message_id} {mails[0].subject[:60]!r} matches no outbox event")
            continue
        first = min(mails, key=lambda m: m.at)
        for _ in mails[1:]:
            if any(_sent_then_killed(first, k) for k in o.kills):
                r.figures["resent at kill"] += 1
                r.details["resent at kill"].append(f"{message_id}: first at {first.at:.3f}")
            else:
                r.fail("dup mails", f"{message_id} mailed {len(mails)} times, first at {first.at:.3f}")


def _sent_then_killed(first: Mail, kill: Kill) -> bool:
    """The first copy was accepted just before the kill (the sink may note it a few ms after the kill's
    own time: it is noted when the server has read the whole mail), over the victim's SMTP connection
    when that is known."""
    if first.peer_port and kill.smtp_ports and first.peer_port not in kill.smtp_ports:
        return False
    return -ACCEPT_LAG_S <= kill.at - first.at <= KILL_WINDOW_S


def _kills(r: Result, o: Observed) -> None:
    ok_calls: dict[int, list[Call]] = defaultdict(list)
    for c in o.calls:
        if c.code == "OK":
            ok_calls[c.task_id].append(c)
    for kill in o.kills:
        r.figures["kills"] += 1
        r.figures["aimed"] += bool(kill.aimed)
        hits, halfway = [], []
        for entry_id, task in kill.pending:
            sent = _entry_ms(entry_id) / 1000  # this entry's crawl started after it was sent
            mine = [c for c in ok_calls[task] if c.port in kill.ports and sent < c.start and c.end <= kill.at]
            if not mine:
                continue  # the crawl was still running (or not started): before the writes
            ended = max(c.end for c in mine)
            writes = [a for a in o.audit.get(task, []) if ended < a.at <= kill.at]
            if any(a.kind != "linked" for a in writes):
                hits.append(task)
            elif writes:
                halfway.append(task)
        r.figures["mid writes"] += bool(halfway) and not hits
        if hits:
            r.figures["in window"] += 1
            again = [t for t in hits if any(c.start > kill.at for c in ok_calls[t])]
            aim = f" (aimed at {kill.aimed})" if kill.aimed else ""
            r.details["in window"].append(
                f"kill of {kill.victim} at {kill.at:.3f}{aim}: tasks {', '.join(map(str, hits))} written, "
                f"not acknowledged; {len(again)} of them crawled again after it"
            )
