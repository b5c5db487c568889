"""scripts/plot_metrics.py: one PNG comparing the loss, lr and throughput of several runs."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

from conftest import ROOT, run_script


def write_run(run_dir: Path, slowdown: float) -> None:
    run_dir.mkdir(parents=True)
    lines = []
    for step in range(10, 210, 10):
        lines.append(
            {"step": step, "loss": 4 * math.exp(-step / 80) + slowdown, "lr": 1e-3 * (1 - step / 250)}
        )
        lines[-1] |= {"tokens_per_sec": 5e4 / (1 + slowdown), "max_steps": 200}
        if step % 50 == 0:
            lines.append({"step": step, "val_loss": lines[-1]["loss"] + 0.1, "val_ppl": 1.0})
            scores = {"acc": 0.25 + step / 400, "acc_norm": 0.3 + step / 500, "examples": 200.0}
            lines.append({"step": step, **{f"eval/next_line/{k}": v for k, v in scores.items()}})
    lines.append({"step": 120, "event": "loss_spike", "skipped": False, "loss": None})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_plot_compares_runs_in_one_png(tmp_path: Path) -> None:
    write_run(tmp_path / "baseline", 0.0)
    write_run(tmp_path / "wider", 0.3)
    out = tmp_path / "compare.png"
    result = run_script(
        "plot_metrics.py", str(tmp_path / "baseline"), str(tmp_path / "wider"), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_plot_of_a_directory_without_metrics_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_script("plot_metrics.py", str(tmp_path))
    assert result.returncode == 2
    missing = tmp_path / "metrics.jsonl"
    assert result.stderr.strip().startswith(
        f"error: {missing} does not exist; give a run directory that holds metrics.jsonl"
    )


def test_task_scores_get_their_own_series_without_counts_and_bleu_scaled() -> None:
    task_series = runpy.run_path(str(ROOT / "scripts" / "plot_metrics.py"))["task_series"]
    records = [
        {"step": 10, "loss": 3.0, "lr": 1e-3},
        {"step": 10, "eval/qa/bleu": 42.0, "eval/qa/f1": 0.5, "eval/qa/examples": 8.0},
        {"step": 20, "eval/qa/bleu": 50.0, "eval/qa/f1": 0.6, "eval/qa/examples": 8.0},
    ]
    assert task_series(records) == {"qa/bleu/100": ([10, 20], [0.42, 0.5]), "qa/f1": ([10, 20], [0.5, 0.6])}
