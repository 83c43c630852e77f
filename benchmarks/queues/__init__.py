"""One module per task queue: its worker-side task (run by the queue's own worker program) and the
harness-side ``Adapter`` that starts that worker and enqueues. Imported lazily, so a queue that is not
installed fails alone."""

from __future__ import annotations

import importlib

from benchmarks.queues.base import Adapter

# name → "module:class"
QUEUES = {
    "ours": "benchmarks.queues.ours:OursAdapter",
    "ours-p2": "benchmarks.queues.ours:OursP2Adapter",  # APP_PROCESSES=2
    "ours-ref": "benchmarks.queues.ours:OursRefAdapter",  # from the checkout in BENCH_OURS_TREE
    "ours-mysql": "benchmarks.queues.ours:OursMysqlAdapter",  # GoodsHunter's data path on local MariaDB
    "celery": "benchmarks.queues.celery_bench:CeleryAdapter",
    "dramatiq": "benchmarks.queues.dramatiq_bench:DramatiqAdapter",
    "dramatiq-p2": "benchmarks.queues.dramatiq_bench:DramatiqP2Adapter",
    "taskiq": "benchmarks.queues.taskiq_bench:TaskiqAdapter",
    "taskiq-w2": "benchmarks.queues.taskiq_bench:TaskiqW2Adapter",
    "saq": "benchmarks.queues.saq_bench:SaqAdapter",
    "arq": "benchmarks.queues.arq_bench:ArqAdapter",
    "rq": "benchmarks.queues.rq_bench:RqAdapter",
    "rq-simple": "benchmarks.queues.rq_bench:RqSimpleAdapter",
    "floor": "benchmarks.queues.floor:FloorAdapter",  # a reference, not a task queue
}
QUICK = ["ours", "celery", "dramatiq", "taskiq", "saq", "arq", "rq"]
MULTI_PROCESS = ["ours-p2", "dramatiq-p2", "taskiq-w2"]  # two processes each: both cores in use
DEFAULT = [*QUICK, "rq-simple", "floor", "ours-mysql", *MULTI_PROCESS]


def load(name: str) -> Adapter:
    module_name, _, cls = QUEUES[name].partition(":")
    adapter: Adapter = getattr(importlib.import_module(module_name), cls)()
    return adapter
