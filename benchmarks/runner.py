"""One queue, start to end: fresh Redis, fresh fake crawler, its worker; warm-up, throughput, then the
paced latency phase once per rate."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import procs
from benchmarks.observer import DoneObserver
from benchmarks.queues import load
from benchmarks.queues.base import Adapter
from benchmarks.work import ENV_CONCURRENCY, ENV_CRAWLER, ENV_REDIS
from scheduler.devtools.redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent
SETTLE_S = 0.3  # between phases: stragglers (acks, result writes after the completion record) finish


@dataclass(frozen=True)
class Options:
    tasks: int
    concurrency: int
    rates: tuple[float, ...]  # latency phase, once per rate (ascending): submissions per second
    latency_s: float  # length of each paced phase
    warmup: int
    items: int  # items per fake crawler answer
    startup_timeout: float
    throughput_timeout: float
    keep_logs: bool


@dataclass
class Paced:
    """One paced phase: submit → done latencies, sorted, and the worker's CPU per task at that rate."""

    rate: float
    submitted: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    cpu_ms: float = 0.0  # idle wake-ups included


@dataclass
class Result:
    name: str
    config: str = ""
    note: str = ""
    grpc: str = "sync"  # the gRPC client its task uses: sync stub or grpc.aio
    error: str = ""
    tasks: int = 0
    done: int = 0
    seconds: float = 0.0  # first enqueue → last completion
    enqueue_s: float = 0.0
    drain_done: int = 0
    drain_s: float = 0.0  # queue pre-filled while the worker was paused: resume → last completion
    cpu_ms: float = 0.0  # worker process tree CPU per task, drain phase (e2e if no drain)
    cpu_phase: str = ""
    cpu_tasks: int = 0  # tasks the CPU figures are per
    redis_cpu_ms: float = 0.0
    paced: list[Paced] = field(default_factory=list)  # one per rate that was run
    rss_sum: float = 0.0  # VmHWM summed over the tree (counts shared pages once per process)
    rss_max: float = 0.0  # VmHWM of the largest process
    pss_peak: float = 0.0  # sampled peak of the tree's summed PSS
    processes: int = 0
    load: list[float] = field(default_factory=list)  # 1-minute load average as each round started
    per_round: list[tuple[float, float]] = field(default_factory=list)  # (e2e, drain) tasks/s per round

    def at(self, rate: float) -> Paced | None:
        return next((p for p in self.paced if p.rate == rate), None)

    @property
    def throughput(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    @property
    def drain(self) -> float:
        return self.drain_done / self.drain_s if self.drain_s else 0.0


class Stage:
    """One queue's stage: fresh Redis, fake crawler, the queue's client, the observer, its worker process;
    torn down in reverse order whatever happened."""

    def __init__(self, name: str, adapter: Adapter, opts: Options, ids: range) -> None:
        self.name, self.adapter, self.opts, self.ids = name, adapter, opts, ids
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.server = RedisServer()
        self.crawler: procs.Proc | None = None
        self.crawler_addr = ""
        self.worker: procs.Proc | None = None
        self.observer: DoneObserver | None = None
        self.sampler: procs.PssSampler | None = None
        self._opened = False

    def __enter__(self) -> Stage:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        self.server.start()
        self.crawler, addr = procs.start_crawler(self.workdir, self.opts.items)
        self.crawler_addr = addr
        self.adapter.open(self.server.url)
        self._opened = True
        self.adapter.prepare(self.ids)
        self.observer = DoneObserver(self.server.client(), self.adapter.done_stream, self.adapter.done_field)
        self.observer.start()
        env = {
            ENV_REDIS: self.server.url,
            ENV_CRAWLER: addr,
            ENV_CONCURRENCY: str(self.opts.concurrency),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            **self.adapter.worker_env(self.server.url, addr, self.opts.concurrency),
        }
        argv = self.adapter.worker_command(self.opts.concurrency, self.server.url)
        self.worker = procs.start(self.name, argv, env, self.workdir)
        self.sampler = procs.PssSampler(self.worker.pid).start()

    @property
    def redis_pid(self) -> int:
        return self.server.process.pid if self.server.process else 0

    def __exit__(self, *exc_info: object) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        for proc in (self.worker, self.crawler):
            if proc is not None:
                proc.stop()
        if self.observer is not None:
            self.observer.stop()
        if self._opened:
            try:
                self.adapter.close()
            except Exception as exc:
                print(f"--- {self.name}: closing the client failed: {exc}", file=sys.stderr)
        self.server.close()


def run_queue(name: str, opts: Options) -> Result:
    result = Result(name)
    try:
        adapter = load(name)
    except Exception as exc:
        result.error = f"not available: {type(exc).__name__}: {exc}"
        return result
    result.config, result.note, result.grpc = (
        adapter.config(opts.concurrency),
        adapter.note,
        adapter.grpc_mode,
    )
    warm = range(1, opts.warmup + 1)
    burst = range(warm.stop, warm.stop + opts.tasks)
    drain = range(burst.stop, burst.stop + opts.tasks)
    paced = range(drain.stop, drain.stop + sum(_paced_count(opts, r) for r in opts.rates))
    stage = Stage(name, adapter, opts, range(1, paced.stop))
    result.load = [os.getloadavg()[0]]
    try:
        with stage:
            assert stage.observer is not None and stage.worker is not None and stage.sampler is not None
            adapter.enqueue_many(warm)
            got = stage.observer.wait_for(warm, opts.startup_timeout)
            if got < len(warm):
                raise RuntimeError(f"warm-up: {got}/{len(warm)} tasks done in {opts.startup_timeout:.0f}s")
            _burst(stage, burst, result)
            if result.done < result.tasks:
                result.error = (
                    f"throughput: {result.done}/{result.tasks} done in {opts.throughput_timeout:.0f}s"
                )
                result.note = _join(result.note, "drain and latency not measured: a backlog is left")
            else:
                run_drain(stage, drain, result)
                _paced_phases(stage, paced.start, result)
            result.rss_sum, result.rss_max, result.processes = procs.peak_rss(stage.worker.pid)
            result.pss_peak = stage.sampler.stop()
            if stage.observer.error is not None:
                raise stage.observer.error
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        if stage.worker is not None:
            result.error += f" (worker {'running' if stage.worker.alive() else 'exited'})"
            print(f"--- {name}: last lines of the worker's log ({stage.worker.log})", file=sys.stderr)
            print(stage.worker.tail(), file=sys.stderr)
        if not isinstance(exc, RuntimeError):
            traceback.print_exc(file=sys.stderr)
    if not opts.keep_logs and not result.error:
        shutil.rmtree(stage.workdir, ignore_errors=True)
    result.per_round = [(result.throughput, result.drain)]
    return result


def _burst(stage: Stage, ids: range, result: Result) -> None:
    """Everything enqueued at once (the client's bulk path where it has one); first enqueue → last done."""
    assert stage.observer is not None and stage.worker is not None
    cpu0, rcpu0 = procs.cpu_seconds(stage.worker.pid), procs.cpu_seconds(stage.redis_pid)
    t0 = time.perf_counter()
    stage.adapter.enqueue_many(ids)
    result.enqueue_s = time.perf_counter() - t0
    result.tasks = len(ids)
    result.done = stage.observer.wait_for(ids, stage.opts.throughput_timeout)
    cpu1, rcpu1 = procs.cpu_seconds(stage.worker.pid), procs.cpu_seconds(stage.redis_pid)
    finished = stage.observer.times(ids)
    if finished:  # CPU per task from here only when the drain phase cannot run (a backlog is left)
        result.seconds = max(finished.values()) - t0
        result.cpu_ms = (cpu1 - cpu0) * 1000 / len(finished)
        result.redis_cpu_ms = (rcpu1 - rcpu0) * 1000 / len(finished)
        result.cpu_phase, result.cpu_tasks = "e2e", len(finished)
    time.sleep(SETTLE_S)


def run_drain(stage: Stage, ids: range, result: Result) -> None:
    """The worker alone: its process tree paused (SIGSTOP) while the tasks are enqueued, so neither the
    harness's enqueueing nor its CPU is in the figure; resume → last completion, CPU of the worker tree."""
    assert stage.observer is not None and stage.worker is not None
    procs.signal_tree(stage.worker.pid, signal.SIGSTOP)
    try:
        stage.adapter.enqueue_many(ids)
    finally:
        cpu0, rcpu0 = procs.cpu_seconds(stage.worker.pid), procs.cpu_seconds(stage.redis_pid)
        t0 = time.perf_counter()
        procs.signal_tree(stage.worker.pid, signal.SIGCONT)
    result.drain_done = stage.observer.wait_for(ids, stage.opts.throughput_timeout)
    cpu1, rcpu1 = procs.cpu_seconds(stage.worker.pid), procs.cpu_seconds(stage.redis_pid)
    finished = stage.observer.times(ids)
    if finished:
        result.drain_s = max(finished.values()) - t0
        result.cpu_ms = (cpu1 - cpu0) * 1000 / len(finished)
        result.redis_cpu_ms = (rcpu1 - rcpu0) * 1000 / len(finished)
        result.cpu_phase, result.cpu_tasks = "drain", len(finished)
    time.sleep(SETTLE_S)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _paced_count(opts: Options, rate: float) -> int:
    return int(rate * opts.latency_s)


def _paced_phases(stage: Stage, first_id: int, result: Result) -> None:
    """The paced phase at each rate, slowest first (a backlog a fast rate leaves cannot spoil a slow one);
    a rate over twice the queue's end-to-end throughput is skipped: it would only measure the backlog."""
    start = first_id
    for rate in sorted(stage.opts.rates):
        ids = range(start, start + _paced_count(stage.opts, rate))
        start = ids.stop
        if result.throughput < rate / 2:
            # no figure in the note: it is the same line in every run it happens in, so it is said once
            why = "end-to-end throughput under half the rate (the runs without a value)"
            result.note = _join(result.note, f"latency at {rate:.0f}/s not measured: {why}")
            continue
        result.paced.append(run_paced(stage, ids, rate))
        time.sleep(SETTLE_S)


def run_paced(stage: Stage, ids: range, rate: float) -> Paced:
    """One enqueue call every 1/rate seconds; latency = observed done - the moment before the enqueue."""
    assert stage.observer is not None and stage.worker is not None
    submitted: dict[int, float] = {}
    cpu0 = procs.cpu_seconds(stage.worker.pid)
    start = time.perf_counter()
    for k, task_id in enumerate(ids):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        submitted[task_id] = time.perf_counter()
        stage.adapter.enqueue_one(task_id)
    stage.observer.wait_for(ids, 15.0)
    cpu1 = procs.cpu_seconds(stage.worker.pid)
    done = stage.observer.times(ids)
    return Paced(
        rate,
        submitted=len(ids),
        latencies_ms=sorted((done[i] - submitted[i]) * 1000 for i in done),
        cpu_ms=(cpu1 - cpu0) * 1000 / max(1, len(done)),
    )


@dataclass
class Baseline:
    mode: str
    calls: int = 0
    seconds: float = 0.0
    cpu_ms: float = 0.0
    rss: float = 0.0
    error: str = ""

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


def run_baseline(mode: str, opts: Options) -> Baseline:
    """Only the gRPC calls, same concurrency, its own process and its own fresh fake crawler."""
    base = Baseline(mode)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-grpc-{mode}-"))
    crawler = None
    try:
        crawler, addr = procs.start_crawler(workdir, opts.items)
        argv = [sys.executable, "-m", "benchmarks.baseline", "--addr", addr, "--mode", mode]
        argv += [
            "--tasks",
            str(opts.tasks),
            "--concurrency",
            str(opts.concurrency),
            "--warmup",
            str(opts.warmup),
        ]
        proc = procs.start(f"grpc-{mode}", argv, {"PYTHONPATH": str(REPO)}, workdir)
        proc.popen.wait(opts.throughput_timeout + 30)
        report = json.loads(proc.log.read_text().strip().splitlines()[-1])
        base.calls, base.seconds, base.rss = report["calls"], report["seconds"], report["rss_mib"]
        base.cpu_ms = report["cpu_s"] * 1000 / max(1, base.calls)
    except Exception as exc:
        base.error = f"{type(exc).__name__}: {exc}"
    finally:
        if crawler is not None:
            crawler.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return base
