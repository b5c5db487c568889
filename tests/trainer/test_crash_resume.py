"""A run killed with SIGKILL and started again with the same command lands on the same loss curve."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY

ARGS = [
    *TINY,
    "trainer.max_steps=40",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "trainer.checkpoint_every=4",
    "model.dropout=0.1",  # dropout makes the torch RNG state part of what must be restored
]


def train_command(run_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), *ARGS, f"out_dir={run_dir}"]


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_at(run_dir: Path, after_steps: int) -> None:
    """Start the run and SIGKILL it once `after_steps` steps are logged (mid-step or mid-save)."""
    process = subprocess.Popen(
        train_command(run_dir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while logged_steps(run_dir) < after_steps and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_sigkill_twice_then_resume_is_bit_identical(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    subprocess.run(train_command(straight), cwd=ROOT, check=True, capture_output=True)
    expected = losses(straight)

    crashed = tmp_path / "crashed"
    rng = random.Random(0)
    first, second = sorted(rng.sample(range(6, 34), 2))
    kill_at(crashed, first)
    kill_at(crashed, second)  # the second start resumes, then dies too: resume twice
    result = subprocess.run(train_command(crashed), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

    got = losses(crashed)
    assert sorted(got) == sorted(expected) == list(range(1, 41))
    assert got == expected  # bit-identical on CPU, every step
