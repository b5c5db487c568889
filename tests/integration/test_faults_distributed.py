"""Faults on one rank of a real 2-rank torchrun job: every rank reacts together, nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch_utils import (
    ROOT,
    TINY_RUN,
    check,
    env,
    free_port,
    records,
    torchrun,
    torchrun_command,
    train_losses,
)

from gptforge.preemption import PREEMPTED_EXIT_CODE
from gptforge.trainer.callbacks import INJECT_ENV

pytestmark = pytest.mark.multiprocess


# 30 DDP steps; checkpoint frequency differs per test, which leaves the losses as they are
DDP_RUN = [*TINY_RUN, "strategy=ddp", "trainer.max_steps=30", "scheduler.warmup_steps=1"]


@pytest.fixture(scope="module")
def straight_losses(tmp_path_factory) -> dict[int, float]:
    """The losses of an uninterrupted 2-rank DDP_RUN: what every interrupted run must end on."""
    run_dir = tmp_path_factory.mktemp("straight")
    check(torchrun([*DDP_RUN, "trainer.checkpoint_every=100", f"out_dir={run_dir}"], timeout=300))
    return train_losses(run_dir)


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed_zero2"])
def test_inf_on_one_rank_skips_the_step_on_every_rank(tmp_path: Path, strategy: str) -> None:
    run_dir = tmp_path / strategy
    overrides = [
        *TINY_RUN,
        f"strategy={strategy}",
        "trainer.max_steps=8",
        "scheduler.warmup_steps=1",
        "trainer.checkpoint_every=0",
        f"out_dir={run_dir}",
    ]
    result = subprocess.run(
        torchrun_command(overrides),
        cwd=ROOT,
        env=env(**{INJECT_ENV: "4:1"}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    check(result)
    events = [r for r in records(run_dir) if "event" in r]
    assert [(e["step"], e["event"], e["skipped"]) for e in events] == [(5, "nonfinite_grad_norm", True)]
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, 9)) and all(loss == loss for loss in losses.values())


def launch_in_session(overrides: list[str]) -> subprocess.Popen:
    """`NPROC=2 ./launch.sh <overrides>` in a session of its own: SLURM signals every process of a job."""
    return subprocess.Popen(
        [str(ROOT / "launch.sh"), *overrides],
        cwd=ROOT,
        env={**env(), "PYTHON": sys.executable, "NPROC": "2", "MASTER_PORT": str(free_port())},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_records(run_dir: Path, launcher: subprocess.Popen, count: int) -> None:
    metrics = run_dir / "metrics.jsonl"
    while launcher.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) < count):
        time.sleep(0.01)


def test_sigterm_to_one_rank_stops_all_with_a_checkpoint_and_launch_sh_exits_75(
    tmp_path: Path, straight_losses: dict[int, float]
) -> None:
    common = [*DDP_RUN, "trainer.checkpoint_every=100"]
    run_dir = tmp_path / "preempted"
    launcher = launch_in_session([*common, f"out_dir={run_dir}"])
    wait_for_records(run_dir, launcher, 10)
    torchrun_pid = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout
    workers = subprocess.run(["pgrep", "-P", torchrun_pid.split()[0]], capture_output=True, text=True).stdout
    assert len(workers.split()) == 2
    subprocess.run(["kill", f"-{signal.SIGUSR1.value}", workers.split()[-1]], check=True)  # one rank only
    _, stderr = launcher.communicate(timeout=120)
    # torchrun reports the ranks' 75 as its own failure; launch.sh exits as its ranks did
    assert launcher.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    assert "gptforge: preempted: all 2 ranks on this node saved the checkpoint and exited 75" in stderr
    assert len(list((run_dir / "checkpoints").glob("step_*"))) == 1

    check(torchrun([*common, f"out_dir={run_dir}"], timeout=300))
    got = train_losses(run_dir)
    assert sorted(got) == list(range(1, 31))
    assert got == straight_losses  # same curve, bit for bit on CPU


def test_sigterm_to_the_whole_job_under_launch_sh_exits_75(tmp_path: Path) -> None:
    run_dir = tmp_path / "preempted"
    launcher = launch_in_session([*DDP_RUN, "trainer.max_steps=300", f"out_dir={run_dir}"])
    wait_for_records(run_dir, launcher, 6)
    os.killpg(launcher.pid, signal.SIGTERM)  # launch.sh, torchrun and both ranks, as scancel does
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    assert len(list((run_dir / "checkpoints").glob("step_*"))) == 1


def worker_of_rank(launcher_pid: int, rank: int) -> int:
    """The pid of torchrun's worker process with RANK=`rank`."""
    workers = subprocess.run(
        ["pgrep", "-P", str(launcher_pid)], capture_output=True, text=True
    ).stdout.split()
    for pid in workers:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank} among {workers}")


def test_sigkill_of_a_worker_under_max_restarts_resumes_to_the_same_losses(
    tmp_path: Path, straight_losses: dict[int, float]
) -> None:
    run_dir = tmp_path / "killed"
    launcher = subprocess.Popen(
        torchrun_command(
            [*DDP_RUN, "trainer.checkpoint_every=4", f"out_dir={run_dir}"],
            launcher_flags=("--max-restarts=1",),
        ),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run_dir / "metrics.jsonl"
    while launcher.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) < 10):
        time.sleep(0.01)
    os.kill(worker_of_rank(launcher.pid, 0), signal.SIGKILL)  # rank 0: the one that commits checkpoints
    stdout, stderr = launcher.communicate(timeout=300)

    assert launcher.returncode == 0, stderr[-3000:]  # torchrun restarted the workers once, and they finished
    resumed = [line for line in stdout.splitlines() if "resumed from" in line]
    assert len(resumed) == 1 and "/checkpoints/step_" in resumed[0], stdout[-3000:]
    got = train_losses(run_dir)
    assert sorted(got) == list(range(1, 31))
    assert got == straight_losses  # bit for bit on CPU, the steps redone after the restart included
