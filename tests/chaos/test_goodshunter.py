"""The GoodsHunter scenario of the fault harness (scheduler/chaos/gh_*): its checks on hand-made histories,
then one short ``mysql-kill9`` run on the machine's MariaDB (skipped where none answers)."""

from __future__ import annotations

import dataclasses

import pytest

from scheduler.chaos import SCENARIOS, Options
from scheduler.chaos.__main__ import command, plan
from scheduler.chaos.checker import Call
from scheduler.chaos.gh_checks import CHECKS, Kill, Observed, gh_check
from scheduler.chaos.gh_db import Audit, TaskRow
from scheduler.chaos.gh_feed import Raise
from scheduler.chaos.gh_mail import Mail
from scheduler.chaos.gh_run import GoodsHunterRun
from scheduler.chaos.producer import Submit
from scheduler.chaos.report import failures
from scheduler.results.mail_render import render

ROWS = [TaskRow(1, "a@example.com", True), TaskRow(2, "b@example.com", False)]


def event(task: int, kind: str, source: str, to: str = "a@example.com", old: str = "") -> dict[str, str]:
    return {"kind": kind, "task_id": str(task), "keyword": "k", "to": to, "source_id": source,
            "title": source, "price": "100", "old_price": old, "image_url": "", "item_url": ""}  # fmt: skip


def mail(entry_id: str, fields: dict[str, str], at: float, port: int = 7) -> Mail:
    return Mail(str(render(fields, entry_id)["Message-ID"]), fields["to"], "s", port, at)


def observed(**changes: object) -> Observed:
    """A clean history: task 1 baselined at 11 and recorded again at 21, one new item, one drop after a
    raise, each mailed once; task 2 (notifications off) baselined, nothing mailed."""
    outbox = {"12000-0": event(1, "new_item", "s1"), "21000-0": event(1, "price_drop", "s3", old="900")}
    base = Observed(
        submits=[Submit(1, "execute", 10.0, "10000-0", 10.0), Submit(1, "execute", 20.0, "20000-0", 20.0),
                 Submit(2, "execute", 10.0, "10001-0", 10.0)],
        audit={1: [Audit(1, "linked", 10.9), Audit(1, "baseline", 11.0), Audit(1, "ran", 21.0)],
               2: [Audit(2, "baseline", 11.0)]},
        rows=ROWS, duplicate_rows=[], links={1: 5, 2: 5}, max_items=10, outbox=outbox,
        mails=[mail(e, f, 30.0) for e, f in outbox.items()], raises=[Raise(1, "s3", 900, 19.0)],
        kills=[], calls=[],
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def failed(o: Observed) -> dict[str, int]:
    result = gh_check(o)
    return {name: result.figures[name] for name in CHECKS if result.figures[name]}


def test_a_clean_history_passes_every_check() -> None:
    result = gh_check(observed())
    assert failed(observed()) == {}
    assert (result.figures["recorded"], result.figures["events"], result.figures["mails"]) == (3, 2, 2)


def test_an_execute_without_a_recorded_crawl_after_it_is_lost() -> None:
    audit = {1: [Audit(1, "baseline", 11.0)], 2: [Audit(2, "baseline", 11.0)]}
    # task 1's second execute (at 20) has no crawl after it; one crawl cannot answer two executes
    assert failed(observed(audit=audit)) == {"lost": 1}


def test_rows_stored_twice_and_links_over_the_cap_fail() -> None:
    o = observed(duplicate_rows=["item 's1' stored 2 times"], links={1: 11})
    assert failed(o) == {"dup rows": 1, "over cap": 1}


def test_events_before_the_baseline_to_a_muted_task_or_announced_twice_fail() -> None:
    outbox = {
        "10500-0": event(1, "new_item", "s0"),  # before task 1's baseline (11.0)
        "12000-0": event(1, "new_item", "s1"),
        "13000-0": event(1, "new_item", "s1"),  # the same item new twice
        "14000-0": event(2, "new_item", "s9", to="b@example.com"),  # notifications off
        "21000-0": event(1, "price_drop", "s3", old="900"),
        "22000-0": event(1, "price_drop", "s3", old="900"),  # two drops for one raise
    }
    o = observed(outbox=outbox, mails=[mail(e, f, 30.0) for e, f in outbox.items()])
    assert failed(o) == {"baseline mails": 1, "dup events": 2, "misdirected": 1}


def test_mails_are_matched_to_events_by_the_mailers_message_id() -> None:
    o = observed()
    [new, drop] = o.mails
    extra = mail("99000-0", event(1, "new_item", "s7"), 31.0)  # no such outbox event
    # the drop missing, the new item twice (the sender alive), a mail nobody wrote an event for
    assert failed(observed(mails=[new, dataclasses.replace(new, at=40.0), extra])) == {
        "missing": 1, "dup mails": 1, "stray": 1,
    }  # fmt: skip
    # mailed, then its sender killed before it wrote the receipt: the mailer's documented window, apart
    killed = Kill(30.002, "d1", frozenset(), frozenset({7}), ())
    result = gh_check(observed(mails=[new, dataclasses.replace(new, at=40.0), drop], kills=[killed]))
    assert failed(observed(mails=[new, dataclasses.replace(new, at=40.0), drop], kills=[killed])) == {}
    assert result.figures["resent at kill"] == 1
    # over another connection than the victim's, it is a duplicate
    elsewhere = Kill(30.002, "d1", frozenset(), frozenset({8}), ())
    assert failed(observed(mails=[new, dataclasses.replace(new, at=40.0), drop], kills=[elsewhere])) == {
        "dup mails": 1
    }


def test_a_kill_after_a_crawls_last_write_and_before_its_ack_is_counted_in_the_window() -> None:
    calls = [Call(1, "k", "OK", 20.5, 20.6, 5), Call(1, "k", "OK", 24.0, 24.1, 6)]
    audit = {1: [Audit(1, "baseline", 11.0), Audit(1, "linked", 20.7), Audit(1, "ran", 20.8)]}
    in_window = Kill(20.9, "d1", frozenset({5}), frozenset(), (("20000-0", 1),))
    mid_writes = Kill(20.75, "d1", frozenset({5}), frozenset(), (("20000-0", 1),))
    crawling = Kill(20.55, "d1", frozenset({5}), frozenset(), (("20000-0", 1),))
    result = gh_check(observed(audit=audit, calls=calls, kills=[in_window, mid_writes, crawling]))
    assert (result.figures["kills"], result.figures["in window"], result.figures["mid writes"]) == (3, 1, 1)
    assert "1 of them crawled again after it" in result.details["in window"][0]


def test_the_scenario_is_replayable_and_refuses_faults_it_cannot_check() -> None:
    assert SCENARIOS["mysql-kill9"] == ("mysql", "kill9")
    opts = Options(seconds=8.0)
    assert "--scenario mysql-kill9 --seed s" in command(None, "mysql-kill9", "s", opts)
    args = type("Args", (), {"faults": "mysql,trim", "scenarios": None, "quick": True})()
    with pytest.raises(SystemExit, match="trim"):
        plan(args)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_mysql_kill9_scenario() -> None:
    """Two daemons on app.task_store = mysql, 8 s of executes and kill -9: every check of gh_checks."""
    opts = Options(seconds=8.0, daemons=2, workers=4, delay_ms=80, rate=12.0, shared=0, quiet=True)
    row = GoodsHunterRun("mysql-kill9", SCENARIOS["mysql-kill9"], "ci-1", opts,
                         command(None, "mysql-kill9", "ci-1", opts)).execute()  # fmt: skip
    if row.skipped:
        pytest.skip(row.skipped)
    report = failures([row])
    assert row.ok, report
    assert row.data["recorded"] > 0 and row.data["events"] > 0 and row.data["mails"] > 0, report
    assert row.data["kills"] > 0, report
