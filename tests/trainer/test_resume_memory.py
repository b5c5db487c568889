"""Resuming costs no more memory than starting: checkpoint state is not held twice while it loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_script

# ~19M parameters: weights and AdamW moments (~230 MB) dwarf the activations of these tiny batches,
# so a second in-memory copy of the checkpoint at load time would show as a 20%+ higher peak
WIDE_RUN = [
    "experiment=smoke",
    "model.n_layer=6",
    "model.n_head=8",
    "model.n_embd=512",
    "model.block_size=32",
    "trainer.micro_batch_size=2",
    "scheduler.warmup_steps=1",
    "scheduler.decay_steps=3",  # the run is extended from 2 to 3 steps on the same schedule
    "trainer.eval_every=0",
    "trainer.log_every=1",
    "trainer.checkpoint_every=2",
    "logger.console.progress_bar=false",
]


def peak_memory_at(run_dir: Path, step: int) -> float:
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("step") == step and "peak_memory_gib" in record:
            return record["peak_memory_gib"]
    raise AssertionError(f"no peak_memory_gib logged at step {step}")


@pytest.mark.slow  # two runs of a 19M-parameter model
def test_peak_memory_of_a_resumed_run_is_within_ten_percent_of_a_fresh_start(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fresh = run_script("train.py", *WIDE_RUN, "trainer.max_steps=2", f"out_dir={run_dir}")
    assert fresh.returncode == 0, fresh.stderr
    resumed = run_script("train.py", *WIDE_RUN, "trainer.max_steps=3", f"out_dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 2" in resumed.stdout  # it did resume, from the checkpoint
    # each process's peak RSS after one step: the fresh start's first step, the resumed run's first
    fresh_peak, resumed_peak = peak_memory_at(run_dir, 1), peak_memory_at(run_dir, 3)
    assert resumed_peak <= 1.1 * fresh_peak, (fresh_peak, resumed_peak)
