"""docs/CONFIGURATION.md and configs/config.example.json, generated from the settings table."""

from __future__ import annotations

import json

from scheduler.config.settings import SPECS, Spec


def _shown_default(spec: Spec) -> str:
    if spec.name == "consumer_name":
        return "the host name"
    if spec.default is None:
        return "none"
    return f"`{json.dumps(spec.kind.show(spec.default), ensure_ascii=False)}`"


def reference_markdown() -> str:
    """The settings table of docs/CONFIGURATION.md."""
    rows = ["| key | environment variable | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for spec in SPECS:
        rows.append(
            f"| `{spec.key}` | `{spec.env}` | {_shown_default(spec)} | {spec.kind.describe} | {spec.doc} |"
        )
    return "\n".join(rows) + "\n"


def example_document() -> dict[str, dict[str, object]]:
    """configs/config.example.json: every key with its default (an empty string where there is none)."""
    document: dict[str, dict[str, object]] = {"app": {}, "redis": {}, "mysql": {}, "email": {}}
    for spec in SPECS:
        shown = spec.kind.show(spec.default)
        document[spec.section][spec.key.split(".", 1)[1]] = "" if shown is None else shown
    return document
