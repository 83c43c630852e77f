"""The fault harness in CI: the checker on hand-made histories, then short scenarios with fixed seeds.

Each scenario starts its own Redis, fake crawler and two daemons, runs a few seconds of one fault while
tasks are submitted, then checks the total-queue properties of `scheduler.chaos.checker`. The long runs
are `./dev chaos` (30 minutes of mixed faults) and `./dev chaos --quick` (every scenario, 20 s each).
"""

from __future__ import annotations

import dataclasses

import pytest

from scheduler.chaos import SCENARIOS, Options, Run
from scheduler.chaos.__main__ import command
from scheduler.chaos.checker import Call, DeadLetter, check
from scheduler.chaos.faults import Deleted, Event
from scheduler.chaos.producer import SHARED_BASE, Submit
from scheduler.chaos.report import failures

OPTIONS = Options(seconds=8.0, daemons=2, workers=4, delay_ms=80, rate=12.0, shared=3, quiet=True)


def ok(task_id: int, start: float, port: int = 1) -> Call:
    return Call(task_id, f"item {task_id}", "OK", start, start + 0.1, port)


def test_checker_counts_lost_duplicated_unexpected_and_the_bound() -> None:
    submits = [Submit(t, "execute", 10.0 + t, f"{t}-0", 10.0 + t) for t in (1, 2, 3, 4)]
    calls = [
        ok(1, 12.0),
        ok(1, 14.0, port=2),  # a second run of task 1 by another daemon
        Call(2, "x", "UNAVAILABLE", 12.5, 12.6, 1),  # a transient call: part of a run, not a run
        ok(2, 12.7),
        ok(99, 13.0),  # never submitted
    ]
    dead = [DeadLetter(None, "3-0", "payload_lost: entry was trimmed or deleted", 15.0)]  # ended by id
    kill = Event("kill9", 12.15, 12.15, victim="d1", ports=frozenset({1}), risk=True)
    v = check(submits, calls, dead, [kill], {1: "d1", 2: "d2"}, Deleted(), everysec=False)
    # task 4 lost; 3 ended by its dead letter; only task 1's first run was in flight at the kill
    assert (v.lost, v.unexpected, v.duplicated, v.bound) == (1, 1, 1, 1)
    assert v.details["lost"] == ["task 4 entry 4-0 submitted at 14.000"]


def test_checker_shared_task_execute_needs_a_crawl_after_it_unless_stopped_later() -> None:
    t = SHARED_BASE
    submits = [
        Submit(t, "execute", 1.0, "a", 1.0),
        Submit(t, "execute", 2.0, "b", 2.0),  # followed by a stop: excused
        Submit(t, "stop", 3.0, "c", 3.0),
        Submit(t, "execute", 4.0, "d", 4.0),  # only a crawl that started before it: lost
    ]
    calls = [ok(t, 1.5), ok(t, 3.95)]
    v = check(submits, calls, [], [], {}, Deleted(), everysec=False)
    assert v.lost == 1 and "execute d" in v.details["lost"][0] and "in flight" in v.details["lost"][0]


def test_checker_entries_deleted_unread_are_the_faults_not_lost() -> None:
    submits = [Submit(1, "execute", 1.0, "1-0", 1.0)]
    deleted = Deleted(unread={"1-0"}, tasks={"1-0": 1})
    v = check(submits, [], [], [], {}, deleted, everysec=False)
    assert (v.lost, v.deleted) == (0, 1)


def test_checker_an_entry_id_reused_after_a_del_does_not_hide_the_deleted_task() -> None:
    """Soak 0525: a DEL held back by CLIENT PAUSE removed the fresh stream holding task 742's entry; the
    recreated stream gave task 743, submitted in the same millisecond, the same id. 742 is the fault's."""
    submits = [Submit(742, "execute", 1.0, "5-0", 1.0), Submit(743, "execute", 1.1, "5-0", 1.1)]
    deleted = Deleted(unread={"5-0"}, tasks={"5-0": 742})
    calls = [Call(743, "item 743", "OK", 1.2, 1.3, 1)]
    v = check(submits, calls, [], [], {1: "d1"}, deleted, everysec=False)
    assert (v.lost, v.deleted, v.duplicated) == (0, 1, 0)


def test_checker_ties_a_moved_retrys_dead_letter_to_its_task_and_names_moves_of_lost_tasks() -> None:
    submits = [Submit(1, "execute", 1.0, "1-0", 1.0), Submit(2, "execute", 1.5, "2-0", 1.5)]
    dead = [DeadLetter(None, "9-0", "payload_lost: entry was trimmed or deleted", 5.0)]
    moved = {"9-0": 1, "8-0": 2}  # task 1's retry became 9-0 (its payload then lost); task 2's 8-0
    v = check(submits, [], dead, [], {}, Deleted(), everysec=False, moved=moved)
    assert v.lost == 1  # without the moves, task 1 would be lost too
    assert v.details["lost"] == ["task 2 entry 2-0 submitted at 1.500; its retries were moved to 8-0"]


def _e6a9_trim() -> tuple[list[Submit], list[Call], list[DeadLetter], Deleted]:
    """Seed e6a9 (mixed): one XTRIM MAXLEN 0 (held back by a CLIENT PAUSE) with last-delivered-id
    1796297673622-0 removed 234 entries. Two shared executes were still unread: 9000003's 1796297675979-0
    and 9000001's 1796297679400-0 (XADDed during the pause, just before the trim ran); no daemon ever read
    them. 9000001's 1796297673332-0 was pending in chaos-2 (crawled at 676.364, then the daemon was
    killed): its payload went too, and a reclaim dead-lettered it payload_lost."""
    a, b = SHARED_BASE + 1, SHARED_BASE + 3
    submits = [
        Submit(b, "execute", 669.423, "1796297669423-0", 669.424),
        Submit(b, "stop", 670.624, "1796297670624-0", 670.625),
        Submit(a, "execute", 673.332, "1796297673332-0", 673.333),
        Submit(b, "execute", 674.623, None, 674.623),  # uncertain (a Redis restart)
        Submit(b, "execute", 675.978, "1796297675979-0", 675.981),
        Submit(a, "execute", 679.400, "1796297679400-0", 679.401),
        Submit(a, "execute", 683.356, None, 683.356),  # the last executes: uncertain (a Redis restart)
        Submit(b, "execute", 683.356, None, 683.356),
    ]
    calls = [
        Call(b, f"shared {b}", "OK", 673.389, 673.491, 40468),
        Call(a, f"shared {a}", "OK", 676.365, 676.467, 40480),
    ]
    dead = [DeadLetter(None, "1796297673332-0", "payload_lost: entry was trimmed or deleted", 679.417)]
    deleted = Deleted(
        unread={"1796297675979-0", "1796297679400-0", "1796297679401-0"},
        tasks={
            "1796297669423-0": b,
            "1796297670624-0": b,
            "1796297673332-0": a,
            "1796297675979-0": b,
            "1796297679400-0": a,
            "1796297679401-0": 216,
        },
    )
    return submits, calls, dead, deleted


def test_checker_shared_executes_a_trim_removed_unread_are_the_faults_not_lost() -> None:
    submits, calls, dead, deleted = _e6a9_trim()
    v = check(submits, calls, dead, [], {}, deleted, everysec=False)
    assert (v.lost, v.deleted) == (0, 2), v.details["lost"]


def test_checker_shared_execute_not_removed_and_never_crawled_is_still_lost() -> None:
    submits, calls, dead, deleted = _e6a9_trim()
    a = SHARED_BASE + 1
    deleted.unread.discard("1796297679400-0")  # seen by the trim, but already read: the fault's no excuse
    submits.append(Submit(a, "execute", 680.0, "1796297680000-0", 680.001))  # after the trim
    v = check(submits, calls, dead, [], {}, deleted, everysec=False)
    assert (v.lost, v.deleted) == (2, 1)
    assert [n.split(" at ")[0] for n in v.details["lost"]] == [
        f"shared task {a}: execute 1796297679400-0",
        f"shared task {a}: execute 1796297680000-0",
    ]


def test_checker_shared_execute_whose_retry_or_payload_a_trim_removed_is_the_faults() -> None:
    t = SHARED_BASE
    submits = [
        Submit(t, "execute", 1.0, "1-0", 1.0),  # deferred behind a run: its retry is 5-0 (origin 1-0)
        Submit(t, "execute", 2.0, "2-0", 2.0),  # pending when an XTRIM took its payload: payload_lost
        Submit(t, "execute", 3.0, "3-0", 3.0),  # pending at that XTRIM too, but no dead letter: lost
    ]
    deleted = Deleted(unread={"5-0"}, tasks={"5-0": t, "2-0": t, "3-0": t}, origins={"5-0": "1-0"})
    dead = [DeadLetter(None, "2-0", "payload_lost: entry was trimmed or deleted", 4.0)]
    v = check(submits, [], dead, [], {}, deleted, everysec=False, moved={"5-0": t})
    assert (v.lost, v.deleted) == (1, 2)
    assert "execute 3-0" in v.details["lost"][0]


FAULT_OPTIONS = dataclasses.replace(OPTIONS, shared=0)  # the shared tasks have their own test below


def run(scenario: str, seed: str, opts: Options) -> None:
    replay = command(None, scenario, seed, opts)
    row = Run(scenario, SCENARIOS[scenario], seed, opts, replay).execute()
    report = failures([row])
    assert not row.error, report
    assert row.submits > 0 and row.crawls > 0, report
    assert row.lost == 0, report
    assert row.unexpected == 0, report
    assert row.duplicated <= row.bound, report
    assert row.stuck == 0, report
    assert row.crashes == 0, report
    assert row.pending == 0, report


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("name", "seed"),
    [
        ("kill9", "ci-1"),
        ("sigstop", "ci-1"),
        ("client-kill", "ci-1"),
        ("proxy", "ci-1"),
        ("redis-restart", "ci-1"),
        ("crawler", "ci-1"),
        ("crawler-hang", "ci-1"),
        ("trim", "ci-1"),
    ],
)
def test_scenario(name: str, seed: str) -> None:
    """Unique tasks only: every acknowledged submit crawled once, duplicates within the run's bound."""
    run(name, seed, FAULT_OPTIONS)


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_shared_tasks_executes_stops_and_reenables() -> None:
    """No fault: a few task ids get executes and stops mixed; each execute must be followed by a crawl
    that started after it, unless a later stop exists."""
    run("none", "ci-1", dataclasses.replace(OPTIONS, shared=4))
