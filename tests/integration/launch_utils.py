"""Run scripts/train.py under real torchrun processes (gloo on CPU) and read what rank 0 logged."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "scripts" / "train.py"

# the tests/conftest.py TINY run, logged every step, no periodic evaluation or sampling
TINY_RUN = [
    "experiment=smoke",
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "trainer.micro_batch_size=4",
    "trainer.eval_batches=2",
    "trainer.eval_every=0",
    "trainer.log_every=1",
    "trainer.sample_tokens=0",
    "logger.console.progress_bar=false",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    # one thread per rank: two ranks share this machine's cores with other test processes
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def torchrun_command(overrides: list[str], nproc: int = 2, launcher_flags: tuple[str, ...] = ()) -> list[str]:
    """`python -m torch.distributed.run --nproc_per_node=N <flags> scripts/train.py <overrides>`, loopback."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        *launcher_flags,
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(TRAIN),
        *overrides,
    ]


def torchrun(
    overrides: list[str], nproc: int = 2, timeout: float = 180, launcher_flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """`torchrun_command(...)` run to the end, output captured."""
    return subprocess.run(
        torchrun_command(overrides, nproc, launcher_flags),
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """`result`, or an AssertionError carrying its output."""
    # torchrun ends with its own failure summary; the rank's traceback comes before it
    output = f"{result.stdout[-2000:]}\n{result.stderr[:6000]}"
    assert result.returncode == 0, f"exit {result.returncode}:\n{output}"
    return result


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> dict[int, float]:
    """Step -> global mean training loss, as rank 0 logged it."""
    return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r}


def max_difference(a: dict[int, float], b: dict[int, float]) -> float:
    assert sorted(a) == sorted(b), f"different steps logged: {sorted(a)} vs {sorted(b)}"
    return max(abs(a[step] - b[step]) for step in a)


def launch_sh(overrides: list[str], **launch_env: str) -> subprocess.Popen:
    """Start `./launch.sh <overrides>` with launch.sh's variables (NPROC, NNODES, LAUNCHER, ...) set."""
    base = {k: v for k, v in env().items() if not k.startswith("SLURM_")}  # no allocation to inherit
    return subprocess.Popen(
        [str(ROOT / "launch.sh"), *overrides],
        cwd=ROOT,
        env={**base, "PYTHON": sys.executable, "MASTER_ADDR": "127.0.0.1", **launch_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 180) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
