"""Metric records on disk (metrics.jsonl): one JSON object per line, read tolerantly."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics file; a line cut short (the disk filled, the process died mid-write) is
    left out with a warning, so that it never blocks a resume."""
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            print(
                f"gptforge: warning: {path}:{number} is not a whole record (a write cut short?); dropped it",
                file=sys.stderr,
                flush=True,
            )
    return records
