"""Where our daemon's time per task goes: ``python -m benchmarks.profile_ours [--tasks N]``.

The real daemon (``python -m scheduler run``) on the benchmark's stage (fresh Redis, fake crawler
process). A burst of N tasks while py-spy samples it (``--gil --nonblocking``: the thread holding the GIL,
the daemon never paused), the same burst under a flame-graph recording, then tasks paced at 200/s.
Printed: CPU per task by thread (/proc), Redis commands per task, py-spy's samples by library, call tree
and function, the gRPC call styles side by side, and per-operation costs with their cheaper equivalents.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from benchmarks import micro, procs
from benchmarks.profile_stacks import Stacks
from benchmarks.queues.base import BIN
from benchmarks.queues.ours import OursAdapter, OursMysqlAdapter
from benchmarks.runner import REPO, Options, Stage, run_baseline, run_paced

RESULTS = REPO / "benchmarks" / "results"
PACED_RATE = 200.0


def command_calls(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in client.info("commandstats").items()}


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per live OS thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / procs.CLK_TCK
    return out


def thread_names(pid: int) -> dict[int, str]:
    """OS thread id → Python thread name (py-spy knows both), else the kernel's comm (gRPC's C threads)."""
    names = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            names[int(tid)] = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            pass
    argv = [str(BIN / "py-spy"), "dump", "--pid", str(pid), "--json"]
    dump = subprocess.run(argv, capture_output=True, text=True, check=False)
    if dump.returncode == 0:
        for thread in json.loads(dump.stdout):
            if thread.get("os_thread_id"):
                names[int(thread["os_thread_id"])] = thread["thread_name"] or "python"
    return names


def group(name: str) -> str:
    if name.startswith("worker"):
        return "worker threads"
    if name == "MainThread":
        return "main thread (read loop)"
    if name.startswith(("grpc", "event_engine", "lifeguard", "default-execu", "resolver")):
        return "gRPC C-core threads"
    return f"{name} thread"


class ThreadMeter:
    """CPU per task by thread group; threads that ended in between (gRPC's channel spin thread, started
    again whenever a call begins with no other call in flight) show as the process total's remainder."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.proc0, self.threads0 = procs.cpu_seconds(pid), thread_cpu(pid)

    def report(self, tasks: int) -> list[str]:
        proc1, threads1 = procs.cpu_seconds(self.pid), thread_cpu(self.pid)
        names = thread_names(self.pid)
        groups: dict[str, float] = {}
        for tid, spent in threads1.items():
            key = group(names.get(tid, "?"))
            groups[key] = groups.get(key, 0.0) + spent - self.threads0.get(tid, 0.0)
        total = proc1 - self.proc0
        groups["threads that ended meanwhile (gRPC channel spin)"] = total - sum(groups.values())
        out = [f"  daemon process: {total * 1000 / tasks:.3f} ms CPU per task"]
        for name, spent in sorted(groups.items(), key=lambda kv: -kv[1]):
            if spent > 0:
                out.append(f"    {name:50} {spent * 1000 / tasks:7.3f} ms  {100 * spent / total:5.1f}%")
        return out


def record(pid: int, fmt: str, out: Path, rate: int) -> subprocess.Popen[bytes]:
    argv = [str(BIN / "py-spy"), "record", "--pid", str(pid), "--format", fmt, "-o", str(out)]
    argv += ["--rate", str(rate), "--gil", "--nonblocking"] + (["--nolineno"] if fmt == "raw" else [])
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attached
    return spy


def finish(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    _, err = spy.communicate(timeout=60)
    if spy.returncode not in (0, -signal.SIGINT):
        print(err.decode(errors="replace")[-2000:], file=sys.stderr)


def burst(stage: Stage, ids: range) -> float:
    assert stage.observer is not None
    t0 = time.perf_counter()
    stage.adapter.enqueue_many(ids)
    done = stage.observer.wait_for(ids, 120)
    if done < len(ids):
        raise RuntimeError(f"only {done}/{len(ids)} tasks done in 120 s")
    return max(stage.observer.times(ids).values()) - t0


def profile(stage: Stage, args: argparse.Namespace, ids: list[range]) -> list[str]:
    assert stage.worker is not None
    warm, first, second, paced = ids
    pid = stage.worker.pid
    burst(stage, warm)
    folded, svg = RESULTS / f"profile-{stage.name}.folded", RESULTS / f"profile-{stage.name}.svg"
    stats = stage.server.client()
    spy = record(pid, "raw", folded, args.rate)
    calls0, meter = command_calls(stats), ThreadMeter(pid)
    seconds = burst(stage, first)
    calls1, cpu_lines = command_calls(stats), meter.report(len(first))
    finish(spy)
    spy = record(pid, "flamegraph", svg, args.rate)
    burst(stage, second)
    finish(spy)
    meter = ThreadMeter(pid)
    lat = run_paced(stage, paced, PACED_RATE).latencies_ms
    paced_lines = meter.report(len(paced))

    n = len(first)
    out = [f"Burst: {n} tasks in {seconds:.2f} s under py-spy ({n / seconds:.0f} tasks/s)", *cpu_lines]
    out += [f"Paced: {len(paced)} tasks at {PACED_RATE:.0f}/s, no profiler (p50 {lat[len(lat) // 2]:.2f} ms)"]
    out += [
        *paced_lines,
        "",
        "Redis commands per task in the burst (INFO commandstats, Lua's own calls included):",
    ]
    per_task = {cmd: (calls1.get(cmd, 0) - calls0.get(cmd, 0)) / n for cmd in calls1}
    out += [f"  {cmd:20} {c:6.2f}" for cmd, c in sorted(per_task.items(), key=lambda kv: -kv[1]) if c >= 0.01]
    stacks = Stacks.load(folded)
    out += [
        "",
        f"GIL held by the daemon {100 * stacks.total / (args.rate * seconds):.0f}% of the burst's wall time",
    ]
    out += [*stacks.report(args.top), "", f"folded stacks: {folded}", f"flame graph:   {svg}"]
    return out


def grpc_styles(opts: Options) -> list[str]:
    out = ["gRPC call styles, calls only (benchmarks.baseline; own process, fresh fake crawler):"]
    for concurrency in (opts.concurrency, 1):
        for mode in ("sync", "future", "handoff", "aio"):
            one = Options(**{**opts.__dict__, "concurrency": concurrency})
            base = run_baseline(mode, one)
            figures = base.error or f"{base.throughput:6.0f} calls/s  {base.cpu_ms:.3f} ms CPU/call"
            out.append(f"  concurrency {concurrency}  {mode:8} {figures}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_ours")
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--store", choices=("redis", "mysql"), default="redis",
        help="the task store: the embedded Redis registry, or GoodsHunter's MySQL data path (local MariaDB)",
    )  # fmt: skip
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    opts = Options(
        tasks=args.tasks, concurrency=args.concurrency, rates=(PACED_RATE,), latency_s=10.0, warmup=50, items=5,
        startup_timeout=30.0, throughput_timeout=120.0, keep_logs=False,
    )  # fmt: skip
    warm = range(1, 51)
    first = range(warm.stop, warm.stop + args.tasks)
    second = range(first.stop, first.stop + args.tasks)
    paced = range(second.stop, second.stop + 2000)
    adapter = OursMysqlAdapter() if args.store == "mysql" else OursAdapter()
    with Stage(adapter.name, adapter, opts, range(1, paced.stop)) as stage:
        lines = profile(stage, args, [warm, first, second, paced])
        lines += ["", *micro.render(micro.measure(stage.server.url, stage.crawler_addr))]
    lines += ["", *grpc_styles(opts)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
