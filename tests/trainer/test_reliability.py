"""What a cluster does to a run, done for real: the whole process group signalled (loader workers too), a
signal during start-up, a torn metrics file, two runs on one out_dir, a stale lock left by a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, TINY, run_script

from gptforge.preemption import PREEMPTED_EXIT_CODE

STREAMING = [
    *TINY,
    "data=local",
    f"data.path={ROOT / 'data' / 'tinyshakespeare.txt'}",
    "data.num_workers=2",
    "tokenizer=byte",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "scheduler=constant",  # the schedule does not depend on max_steps: runs may stop anywhere
    "scheduler.warmup_steps=1",
]


def start(args: list[str], run_dir: Path) -> subprocess.Popen:
    """train.py in a session of its own, so that its whole process group can be signalled as SLURM does."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args, f"out_dir={run_dir}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if '"loss"' in line) if path.exists() else 0


def wait_for(run_dir: Path, process: subprocess.Popen, steps: int) -> None:
    deadline = time.monotonic() + 120
    while logged_steps(run_dir) < steps and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()[1]


def test_sigterm_to_the_whole_process_group_with_loader_workers_saves_and_exits_75(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*STREAMING, "trainer.max_steps=400", "trainer.checkpoint_every=1000"]
    process = start(args, run_dir)
    wait_for(run_dir, process, 8)
    os.killpg(process.pid, signal.SIGTERM)  # the main process and both DataLoader workers
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == PREEMPTED_EXIT_CODE, stderr
    assert "preempted by SIGTERM" in stderr and "DataLoader worker" not in stderr
    saved = sorted((run_dir / "checkpoints").glob("step_*"))
    assert len(saved) == 1  # checkpoint_every=1000: saved because of the signal
    step = int(saved[0].name.removeprefix("step_"))
    resumed = run_script("train.py", *args, f"out_dir={run_dir}", f"trainer.max_steps={step + 2}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {saved[0]} at step {step}" in resumed.stdout


def test_sigterm_during_start_up_exits_75_without_a_step(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = start([*STREAMING, "trainer.max_steps=4"], run_dir)
    time.sleep(1.0)  # imports and building: no step yet
    assert logged_steps(run_dir) == 0
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == PREEMPTED_EXIT_CODE, stderr
    assert "preempted by SIGTERM during start-up, before any step ran: run the same command" in stderr
    assert not list((run_dir / "checkpoints").glob("step_*"))


def test_a_torn_metrics_line_is_dropped_with_a_warning_and_the_run_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.log_every=1", "trainer.eval_every=0", "scheduler=constant"]
    args += ["scheduler.warmup_steps=1", "trainer.checkpoint_every=4", f"out_dir={run_dir}"]
    assert run_script("train.py", *args, "trainer.max_steps=4").returncode == 0
    with open(run_dir / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 5, "max_steps": 8, "lo')  # what a full disk left mid-write
    resumed = run_script("train.py", *args, "trainer.max_steps=8")
    assert resumed.returncode == 0, resumed.stderr
    assert "metrics.jsonl:" in resumed.stderr and "dropped it" in resumed.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 9))


def test_a_second_run_on_the_same_out_dir_is_refused_naming_the_first(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*STREAMING, "data.num_workers=0", "trainer.checkpoint_every=100"]
    first = start([*args, "trainer.max_steps=100000"], run_dir)  # still running, however loaded the machine
    wait_for(run_dir, first, 3)
    second = run_script("train.py", *args, f"out_dir={run_dir}")
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"out_dir {run_dir} is in use by another run (pid {first.pid} on " in lines[0]
    first.send_signal(signal.SIGKILL)  # the holder dies without releasing anything
    first.wait(timeout=60)
    saved = [int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*")]
    # the kernel dropped the dead run's lock: a new start takes it and resumes from the last checkpoint
    one_more = f"trainer.max_steps={max(saved, default=0) + 1}"
    third = run_script("train.py", *args, f"out_dir={run_dir}", one_more)
    assert third.returncode == 0, third.stderr
    assert "resumed from" in third.stdout or not saved


def test_a_forked_child_of_a_killed_run_does_not_keep_its_lock(tmp_path: Path) -> None:
    # a loader worker outlives its SIGKILLed parent by seconds; it must not hold the run directory meanwhile
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, signal, sys, time\n"
            "from gptforge.trainer.lock import RunDirectoryLock\n"
            f"RunDirectoryLock({str(tmp_path)!r}).acquire()\n"
            "ready, tell = os.pipe()\n"
            "if os.fork() == 0:\n"  # the fork hooks have run by the time the child's code does
            "    os.write(tell, b'1'); time.sleep(60); os._exit(0)\n"
            "os.read(ready, 1)\n"
            "print('locked', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        holder.wait(timeout=30)
        from gptforge.trainer.lock import RunDirectoryLock

        lock = RunDirectoryLock(tmp_path)
        lock.acquire()  # the orphaned child is still asleep, and the lock is free
        lock.release()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
