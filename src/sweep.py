"""Hydra sweeps (`-m`): one run directory per job, named by its overrides, and one table at the end."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from gptforge.records import read_metrics

SUMMARY_FILE = "sweep_summary.md"


def job_dirname(task_overrides: list[str], job_num: int, argv: list[str] | None = None) -> str:
    """A sweep job's directory name: the values of the swept keys (`optim.lr=0.001,model.n_layer=6`),
    read from the command line's sweep overrides; the job number where none can be told apart."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    argv = sys.argv[1:] if argv is None else argv
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    except Exception:  # not Hydra's grammar (e.g. a test harness): fall back to the number
        return str(job_num)
    swept = [o.key_or_group for o in parsed if o.is_sweep_override()]
    values = dict(override.split("=", 1) for override in task_overrides if "=" in override)
    parts = [f"{key}={values[key]}".replace("/", "_") for key in swept if key in values]
    return ",".join(parts) or str(job_num)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The run directories under a sweep directory (those holding metrics.jsonl), in name order."""
    if not sweep_dir.is_dir():
        return []
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / "metrics.jsonl").is_file())


def summarise(run_dir: Path) -> dict[str, Any]:
    """A job's final step, train loss, val loss and median tokens/s, from its metrics.jsonl."""
    records = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in records if "loss" in r and "event" not in r]
    val = [r for r in records if "val_loss" in r]
    rates = [r["tokens_per_sec"] for r in train if "tokens_per_sec" in r]
    return {
        "job": run_dir.name,
        "step": train[-1]["step"] if train else 0,
        "loss": train[-1]["loss"] if train else None,
        "val_loss": val[-1]["val_loss"] if val else None,
        "tokens_per_sec": statistics.median(rates) if rates else None,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of job summaries, best validation loss first."""

    def number(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    ordered = sorted(rows, key=lambda r: (r["val_loss"] is None, r["val_loss"] or 0.0, r["job"]))
    lines = ["| job | step | loss | val_loss | tokens/s |", "| --- | --- | --- | --- | --- |"]
    for row in ordered:
        lines.append(
            f"| {row['job']} | {row['step']} | {number(row['loss'], '.4f')} "
            f"| {number(row['val_loss'], '.4f')} | {number(row['tokens_per_sec'], ',.0f')} |"
        )
    return "\n".join(lines)


class SweepSummary(Callback):
    """After a multirun: prints the jobs' final losses as one table and writes it to sweep_summary.md."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = [summarise(run_dir) for run_dir in job_dirs(sweep_dir)]
        if not rows:
            return
        text = table(rows)
        (sweep_dir / SUMMARY_FILE).write_text(text + "\n")
        print(f"\nsweep of {len(rows)} jobs in {sweep_dir} (best val_loss first):\n{text}", flush=True)
