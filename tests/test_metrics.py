"""The metric set: its own registry per daemon, Prometheus conventions, and docs/OPERATIONS.md in step."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from scheduler.metrics import CIRCUIT_STATES, Metrics
from scheduler.web.group import SUPERVISOR_SERIES

OPERATIONS = Path(__file__).parent.parent / "docs" / "OPERATIONS.md"


def exposed(metrics: Metrics) -> dict[str, str]:
    """Family name as scraped (counters with ``_total``) → type."""
    return {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in metrics.registry.collect()
    }


def populated() -> Metrics:
    """Every metric with a sample, every label in use, as after a busy day."""
    m = Metrics()
    for status in (
        "success",
        "no_items",
        "requeued",
        "dead_lettered",
        "skipped",
        "duplicate",
        "cancelled",
        "stop",
        "deferred",
        "not_held",
    ):
        m.tasks_processed.labels(status).inc()
    for reason in ("max_retry", "permanent", "max_deliveries", "payload_lost", "bad_json"):
        m.dead_letters.labels(reason).inc()
    for code in ("OK", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"):
        m.crawler_calls.labels(code).observe(0.2)
    for where in ("read", "outcome"):
        m.redis_errors.labels(where).inc()
    m.processing_duration.observe(1.5)
    m.queue_wait.observe(0.01)
    m.set_circuit("half_open")
    return m


def test_each_instance_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()  # two daemons in one process must not collide
    first.tasks_processed.labels("success").inc(3)
    assert first.registry.get_sample_value("goodshunter_tasks_processed_total", {"status": "success"}) == 3
    assert (
        second.registry.get_sample_value("goodshunter_tasks_processed_total", {"status": "success"}) is None
    )
    assert REGISTRY.get_sample_value("goodshunter_tasks_processed_total", {"status": "success"}) is None


@pytest.mark.parametrize(("state", "value"), [*CIRCUIT_STATES.items(), ("something new", 2)])
def test_circuit_gauge_values(state: str, value: int) -> None:
    m = Metrics()
    m.set_circuit(state)
    assert m.registry.get_sample_value("goodshunter_crawler_circuit_state") == value


def test_names_follow_prometheus_conventions() -> None:
    for name, kind in exposed(Metrics()).items():
        assert re.fullmatch(r"goodshunter_[a-z_]+", name), name
        if kind == "counter":
            assert name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        if kind == "gauge":
            assert not name.endswith(("_total", "_count", "_sum", "_bucket")), name


def test_a_full_scrape_round_trips_through_the_parser() -> None:
    body = generate_latest(populated().registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert families["goodshunter_tasks_processed"].type == "counter"
    calls = [
        s for s in families["goodshunter_crawler_call_duration_seconds"].samples if s.name.endswith("_count")
    ]
    assert {s.labels["code"] for s in calls} == {
        "OK",
        "UNKNOWN",
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "CANCELLED",
    }
    assert families["goodshunter_crawler_circuit_state"].samples[0].value == 1


def test_promtool_finds_nothing_to_complain_about() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (CI installs it)")
    body = generate_latest(populated().registry).decode()
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30
    )
    assert (lint.returncode, lint.stdout, lint.stderr) == (0, "", "")


def test_every_metric_is_documented_and_the_docs_name_no_other() -> None:
    doc = OPERATIONS.read_text(encoding="utf-8")
    names = set(exposed(Metrics())) | set(SUPERVISOR_SERIES)  # the group's own, beside the daemons'
    documented = set(re.findall(r"`(goodshunter_[a-z_]+)(?:\{[^}`]*\})?`", doc))
    assert names - documented == set(), "add these to the metrics table of docs/OPERATIONS.md"
    # the incident notes may name a histogram's _bucket/_count series
    stale = {n for n in documented - names if re.sub(r"_(bucket|count|sum)$", "", n) not in names}
    assert stale == set(), "docs/OPERATIONS.md names metrics that do not exist"
