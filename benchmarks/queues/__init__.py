"""One module per task queue: its worker-side task (run by the queue's own worker program) and the
harness-side ``Adapter`` that starts that worker and enqueues. Imported lazily, so a queue that is not
installed fails alone."""

from __future__ import annotations

import importlib

from benchmarks.queues.base import Adapter

# name → "module:class"
QUEUES = {
    "ours": "benchmarks.queues.ours:OursAdapter",
    "celery": "benchmarks.queues.celery_bench:CeleryAdapter",
    "dramatiq": "benchmarks.queues.dramatiq_bench:DramatiqAdapter",
    "taskiq": "benchmarks.queues.taskiq_bench:TaskiqAdapter",
    "saq": "benchmarks.queues.saq_bench:SaqAdapter",
    "arq": "benchmarks.queues.arq_bench:ArqAdapter",
    "rq": "benchmarks.queues.rq_bench:RqAdapter",
    "rq-simple": "benchmarks.queues.rq_bench:RqSimpleAdapter",
    "floor": "benchmarks.queues.floor:FloorAdapter",  # a reference, not a task queue
}
QUICK = ["ours", "celery", "dramatiq", "taskiq", "saq", "arq", "rq"]
DEFAULT = [*QUICK, "rq-simple", "floor"]


def load(name: str) -> Adapter:
    module_name, _, cls = QUEUES[name].partition(":")
    adapter: Adapter = getattr(importlib.import_module(module_name), cls)()
    return adapter
