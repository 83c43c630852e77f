"""One row per scenario, printed as a table and optionally written as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

COLUMNS = (
    "scenario", "seed", "submits", "crawls", "lost", "unexpected", "duplicated", "bound",
    "stuck", "crashes", "pending", "rss", "verdict",
)  # fmt: skip


@dataclass
class Row:
    scenario: str
    seed: str
    command: str
    submits: int = 0
    uncertain: int = 0
    crawls: int = 0
    lost: int = 0
    deleted: int = 0  # removed by a trim/DEL fault before being read: not a failure
    aof_window: int = 0  # acknowledged submits lost with appendfsync everysec: reported, not a failure
    unexpected: int = 0
    duplicated: int = 0
    bound: int = 0
    stuck: int = 0
    crashes: int = 0
    pending: int = 0
    dead_letters: int = 0
    rss_start_mib: float = 0.0
    rss_end_mib: float = 0.0
    events: dict[str, int] = field(default_factory=dict)
    details: dict[str, list[str]] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
    # a scenario's own columns, in order (the GoodsHunter data path's, gh_checks), and those of them that
    # must be 0; printed as a second table by data_table
    data: dict[str, int] = field(default_factory=dict)
    must_be_zero: list[str] = field(default_factory=list)
    skipped: str = ""  # why the scenario could not run here (e.g. no MariaDB): neither ok nor a failure

    @property
    def ok(self) -> bool:
        if self.skipped:
            return True
        return (
            not self.error
            and all(self.data.get(name, 0) == 0 for name in self.must_be_zero)
            and self.lost == 0
            and self.unexpected == 0
            and self.duplicated <= self.bound
            and self.stuck == 0
            and self.crashes == 0
            and self.pending == 0
        )

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "skipped"
        if self.error:
            return "ERROR"
        return "ok" if self.ok else "FAIL"

    def cells(self) -> list[str]:
        lost = str(self.lost)
        extra = [
            f"{self.deleted} deleted" if self.deleted else "",
            f"{self.aof_window} aof" if self.aof_window else "",
        ]
        if any(extra):
            lost += " (" + ", ".join(x for x in extra if x) + ")"
        return [
            self.scenario, self.seed, str(self.submits), str(self.crawls), lost, str(self.unexpected),
            str(self.duplicated), str(self.bound), str(self.stuck), str(self.crashes), str(self.pending),
            f"{self.rss_start_mib:.0f}→{self.rss_end_mib:.0f} MiB", self.verdict,
        ]  # fmt: skip

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict
        return data


def table(rows: list[Row]) -> str:
    return _aligned([list(COLUMNS), *(row.cells() for row in rows)])


def data_table(rows: list[Row]) -> str:
    """The scenarios' own columns (rows that have some), or ''."""
    mine = [row for row in rows if row.data]
    names = list(dict.fromkeys(name for row in mine for name in row.data))
    if not mine:
        return ""
    grid = [["scenario", "seed", *names, "verdict"]]
    grid += [
        [row.scenario, row.seed, *(str(row.data.get(n, "")) for n in names), row.verdict] for row in mine
    ]
    return _aligned(grid)


def _aligned(grid: list[list[str]]) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    widths = [max(len(line[i]) for line in grid) for i in range(len(grid[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in grid]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def failures(rows: list[Row], per_kind: int = 8) -> str:
    out = []
    for row in rows:
        if row.ok:
            continue
        out.append(f"{row.scenario} (seed {row.seed}) {row.verdict}: replay with `{row.command}`")
        if row.error:
            out.append(f"  error: {row.error}")
        for kind, lines in row.details.items():
            for line in lines[:per_kind]:
                out.append(f"  {kind}: {line}")
            if len(lines) > per_kind:
                out.append(f"  {kind}: … {len(lines) - per_kind} more")
    return "\n".join(out)


def write_json(rows: list[Row], path: Path) -> None:
    path.write_text(json.dumps([row.as_json() for row in rows], indent=2, ensure_ascii=False) + "\n")
