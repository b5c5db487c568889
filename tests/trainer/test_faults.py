"""Numerical faults and preemption: a bad step never reaches the weights, a SIGTERM never loses work."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, run_script

from gptforge.config import TrainerConfig
from gptforge.preemption import PREEMPTED_EXIT_CODE
from gptforge.trainer import train
from gptforge.trainer.callbacks import INJECT_ENV
from gptforge.trainer.faults import StepGuard, TrainingStopped

FAULT_RUN = [
    "trainer.max_steps=8",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "trainer.checkpoint_every=1",
    "trainer.keep_last=10",
    "scheduler.warmup_steps=1",
]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_nonfinite_step_is_skipped_and_leaves_weights_and_optimizer_untouched(
    tiny_config, monkeypatch
) -> None:
    monkeypatch.setenv(INJECT_ENV, "4:0")  # the 5th step's gradients are inf
    cfg = tiny_config(*FAULT_RUN)
    run_dir = Path(cfg.out_dir)
    train(cfg, run_dir)

    events = [r for r in records(run_dir) if "event" in r]
    assert events == [{"step": 5, "event": "nonfinite_grad_norm", "skipped": True, "event_loss": None}]
    checkpoints = run_dir / "checkpoints"
    for name in ("model.pt", "optimizer.pt"):
        before = torch.load(checkpoints / "step_4" / name, weights_only=True)
        after = torch.load(checkpoints / "step_5" / name, weights_only=True)
        assert str(before) == str(after), name  # bit-for-bit the same state
    losses = [r["loss"] for r in records(run_dir) if "loss" in r]
    assert len(losses) == 8 and all(loss == loss for loss in losses)  # finite afterwards


def test_policy_stop_saves_the_last_good_state_and_exits_with_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY, *FAULT_RUN, f"out_dir={run_dir}", "trainer.nonfinite_policy=stop"]
    result = run_script("train.py", *args, env={INJECT_ENV: "4:0"})
    assert result.returncode == TrainingStopped.exit_code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "non-finite gradient norm at step 5" in lines[0]
    assert (run_dir / "checkpoints" / "step_4" / "manifest.json").is_file()
    resumed = run_script("train.py", *args)  # without the fault, the same command finishes the run
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "checkpoints" / "step_8").is_dir()


def test_loss_spikes_are_detected_against_the_recent_window() -> None:
    guard = StepGuard(TrainerConfig(spike_threshold=3.0, spike_window=10))
    for step, loss in enumerate([2.0, 2.1, 1.9, 2.0, 2.05, 1.95, 2.0, 2.02, 1.98, 2.0]):
        guard.after_step(step, loss, stepped=True, spike=False)
    assert not guard.is_spike(2.1)
    assert guard.is_spike(3.0)


def test_a_resumed_run_skips_the_same_spikes_as_the_straight_one(tiny_config, tmp_path: Path) -> None:
    # a threshold this low makes spikes frequent right after the restart at step 15 (steps 17-22 here):
    # a resume that forgot the window would step through them (it needs half a window of history)
    spiky = ["trainer.log_every=1", "trainer.eval_every=0", "trainer.spike_threshold=0.01"]
    spiky += ["trainer.spike_window=6", "trainer.spike_policy=skip", "scheduler=constant"]
    spiky += ["scheduler.warmup_steps=1", "optim.lr=0.01", "trainer.checkpoint_every=15"]

    def run(name: str, steps: int) -> Path:
        cfg = tiny_config(*spiky, f"trainer.max_steps={steps}", f"out_dir={tmp_path / name}")
        train(cfg, Path(cfg.out_dir))
        return Path(cfg.out_dir)

    straight = records(run("straight", 24))
    run("resumed", 15)
    resumed = records(run("resumed", 24))

    def after_restart(log: list[dict]) -> list[dict]:
        return [r for r in log if r["step"] > 15 and ("loss" in r or "event" in r)]

    spikes = [r["step"] for r in after_restart(straight) if r.get("event") == "loss_spike"]
    assert any(step <= 18 for step in spikes)  # within the half window a forgetful resume would miss
    assert [{k: r[k] for k in ("step", "loss", "event") if k in r} for r in after_restart(resumed)] == [
        {k: r[k] for k in ("step", "loss", "event") if k in r} for r in after_restart(straight)
    ]


def test_too_many_skipped_steps_in_a_row_stop_the_run() -> None:
    guard = StepGuard(TrainerConfig(max_consecutive_skips=2))
    guard.after_step(0, None, stepped=False, spike=False)
    guard.after_step(1, None, stepped=False, spike=False)
    with pytest.raises(TrainingStopped, match="3 step"):
        guard.after_step(2, None, stepped=False, spike=False)


def test_sigterm_saves_exits_75_and_the_requeued_run_continues_the_same_curve(tmp_path: Path) -> None:
    args = [
        *TINY,
        "trainer.max_steps=30",
        "trainer.log_every=1",
        "trainer.eval_every=0",
        "trainer.checkpoint_every=100",
        "model.dropout=0.1",
    ]
    straight = run_script("train.py", *args, f"out_dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr

    run_dir = tmp_path / "preempted"
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), *args, f"out_dir={run_dir}"]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    metrics = run_dir / "metrics.jsonl"
    while process.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) < 10):
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == PREEMPTED_EXIT_CODE, stderr
    assert "preempted by SIGTERM" in stderr
    saved = [p.name for p in (run_dir / "checkpoints").glob("step_*")]
    assert len(saved) == 1  # checkpoint_every=100: this one exists only because of the signal

    requeued = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert requeued.returncode == 0, requeued.stderr

    def losses(path: Path) -> dict:
        return {r["step"]: r["loss"] for r in records(path) if "loss" in r}

    assert losses(run_dir) == losses(tmp_path / "straight")  # bit-identical, every step
