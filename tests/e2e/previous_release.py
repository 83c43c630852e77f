"""The previous release (commit 6d2b5df) installed in its own venv, to run beside this one (tests/e2e/test_upgrade.py).

The venv is cached in ``.venv-previous/`` at the repo root (gitignored); a marker file names the commit it
holds, so it is built once (about 15 s: pip reaches PyPI for grpcio & co.) and reused until the commit changes.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import redis

from scheduler.taskqueue import keys
from tests.e2e.support import FAST_ENV, GROUP, STREAM, DaemonProcess, Daemons, wait_until

PREVIOUS_COMMIT = "6d2b5df"
ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-previous"
MARKER = VENV / "INSTALLED_COMMIT"
NEW_SCHEDULER = Path(sys.executable).parent / "goodshunter-scheduler"


class NotInstallable(Exception):
    """The previous release cannot be installed here (no git history, no network...): one line why."""


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)


def install_previous_release() -> Path:
    """The previous release's ``goodshunter-scheduler``, installing it into ``.venv-previous/`` if needed."""
    if shutil.which("git") is None:
        raise NotInstallable("git is not installed")
    found = _git("rev-parse", "--verify", "--quiet", f"{PREVIOUS_COMMIT}^{{commit}}")
    if found.returncode != 0:
        raise NotInstallable(f"commit {PREVIOUS_COMMIT} is not in this clone's history (shallow clone?)")
    commit = found.stdout.strip()
    script = VENV / "bin" / "goodshunter-scheduler"
    lock_path = Path(tempfile.gettempdir()) / f"goodshunter-venv-previous-{os.getuid()}.lock"
    with open(lock_path, "w") as lock:  # xdist workers: one installs, the others wait and reuse
        fcntl.flock(lock, fcntl.LOCK_EX)
        if MARKER.exists() and MARKER.read_text().strip() == commit and script.exists():
            return script
        shutil.rmtree(VENV, ignore_errors=True)
        steps = [
            [sys.executable, "-m", "venv", str(VENV)],
            [
                str(VENV / "bin" / "pip"),
                "install",
                "-q",
                "--disable-pip-version-check",
                f"git+file://{ROOT}@{commit}",
            ],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False, timeout=900)
            if done.returncode != 0:
                shutil.rmtree(VENV, ignore_errors=True)
                last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise NotInstallable(f"{' '.join(step[:3])}... failed: {last}")
        if not script.exists():
            raise NotInstallable(f"the install of {PREVIOUS_COMMIT} has no goodshunter-scheduler script")
        MARKER.write_text(commit + "\n")  # last: a half-built venv is never reused
        return script


def start_daemon(group: Daemons, binary: Path, name: str, workers: int = 4, **env: str) -> DaemonProcess:
    """``Daemons.start`` with another release's console script; reaped by the group's teardown."""
    full_env = {
        **os.environ,
        **FAST_ENV,
        "REDIS_URL": group.redis_url,
        "APP_CRAWLER_GRPC_ADDR": group.crawler_addr,
        **group.env,
        **env,
    }
    full_env.pop("VIRTUAL_ENV", None)
    log_path = group.tmp / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(binary), "run", "--consumer", name, "--workers", str(workers)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=group.tmp,  # no configs/config.json of the working tree
        )
    daemon = DaemonProcess(name, process, log_path)
    group.started.append(daemon)
    client = redis.Redis.from_url(group.redis_url)
    try:
        key = keys.heartbeat_key(STREAM, GROUP, name)
        wait_until(lambda: client.exists(key) or process.poll() is not None, 20, what=f"{name} heartbeat")
    finally:
        client.close()
    assert process.poll() is None, f"{name} exited early:\n{log_path.read_text()[-3000:]}"
    return daemon
