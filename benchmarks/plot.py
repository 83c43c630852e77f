"""The latency distributions as one PNG: per concurrency and paced rate a panel with the empirical CDF of
submit → done latency of every queue (samples pooled over the runs), log-scale x axis. A CDF shows what
p50/p99 alone hide: a long tail, a bimodal queue (arq's poll delay), a queue that falls behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: the harness runs in terminals and CI

import matplotlib.pyplot as plt
from matplotlib import ticker
from matplotlib.axes import Axes

from benchmarks import rounds as r_
from benchmarks.report import num

VARIANT_SUFFIXES = ("-p2", "-w2", "-ref")  # drawn in the colour of the queue they vary
VARIANT_LINES = {"-p2": "--", "-w2": "--", "-ref": "-."}  # two variants of one queue never share a line


def _style(names: list[str]) -> dict[str, tuple[Any, str]]:
    """A colour per base queue (the same in every panel); its variants dashed (-p2, -w2) or dash-dotted (-ref)."""
    palette = matplotlib.color_sequences["tab10"]
    bases: list[str] = []
    for name in names:
        base = _base(name)
        if base not in bases:
            bases.append(base)
    colour = {base: palette[k % len(palette)] for k, base in enumerate(bases)}
    return {n: (colour[_base(n)], _line(n)) for n in names}


def _line(name: str) -> str:
    return next((line for suffix, line in VARIANT_LINES.items() if name.endswith(suffix)), "-")


def _base(name: str) -> str:
    return next((name.removesuffix(s) for s in VARIANT_SUFFIXES if name.endswith(s)), name)


def latency_cdf(suites: list[r_.Suite], rates: list[float], runs: int, path: Path) -> bool:
    """Write the PNG; False (and nothing written) when no queue has a latency sample at any rate."""
    if not any(r.paced for s in suites for rs in s.runs.values() for r in rs):
        return False
    style = _style([n for s in suites for n in s.names])
    fig, axes = plt.subplots(
        len(suites), len(rates), figsize=(7.5 * len(rates), 5.0 * len(suites)), squeeze=False
    )
    for row, suite in enumerate(suites):
        for col, rate in enumerate(rates):
            _panel(axes[row][col], suite, rate, style)
    fig.suptitle(
        f"submit -> done latency, empirical CDF per queue (samples pooled over {runs} run(s); "
        "legend: pooled p50 / p99 in ms)",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _panel(ax: Axes, suite: r_.Suite, rate: float, style: dict[str, tuple[Any, str]]) -> None:
    for name, rs in suite.runs.items():
        samples = r_.pooled_latencies(rs, rate)
        if not samples:
            continue
        n = len(samples)
        colour, line = style[name]
        p50, p99 = samples[min(n - 1, n // 2)], samples[min(n - 1, int(0.99 * n))]
        measured = sum(1 for r in rs if r.at(rate))
        partial = f"  ({measured}/{len(rs)} runs)" if measured < len(rs) else ""
        label = f"{name:11} p50 {num(p50):>6}  p99 {num(p99):>6}{partial}"
        ax.step(
            samples, [(k + 1) / n for k in range(n)], where="post", color=colour, linestyle=line, label=label
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_ylim(0, 1.005)
    ax.set_xlabel("latency, ms (log scale)")
    ax.set_ylabel("fraction of tasks done within")
    ax.set_title(f"{rate:g} tasks/s, concurrency {suite.concurrency}")
    ax.grid(True, which="both", alpha=0.3)
    for q in (0.5, 0.99):
        ax.axhline(q, color="grey", linewidth=0.6, linestyle=":")
    if ax.has_data():
        ax.legend(loc="best", prop={"family": "monospace", "size": 8})
    else:
        ax.text(0.5, 0.5, "no queue measured at this rate", ha="center", transform=ax.transAxes)
