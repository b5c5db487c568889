"""The device mesh with real torchrun processes (gloo on CPU): tensor parallelism, FSDP x TP, HSDP and
pipeline stages, and a checkpoint of one mesh resumed on another.

Every run here is fp32 on CPU from the same seed and the same global batch of 8 sequences, and a meta
build starts from the single-process build's weights bit for bit (src/trainer/initial_weights.py), so
the meshes differ from one process only in the order floating-point sums are taken (sharded matmuls,
all-reduce and reduce-scatter), ~1e-7 relative per step. LOSS_TOLERANCE = 1e-5 leaves a margin for that,
while a wrong split (a head on the wrong rank, a norm not sequence-parallel, a gradient not reduced
over one mesh dimension, a batch share read twice) moves the loss by 1e-2 within a step.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config
from launch_utils import (
    ROOT,
    TINY_RUN,
    check,
    env,
    max_difference,
    records,
    torchrun,
    torchrun_command,
    train_losses,
)

from gptforge.trainer import train
from gptforge.trainer.strategies.pipeline import GLOO_PIPELINE_TORCH

pytestmark = pytest.mark.multiprocess

LOSS_TOLERANCE = 1e-5
STEPS = 20
RUN = [
    *TINY_RUN,
    f"trainer.max_steps={STEPS}",
    f"scheduler.decay_steps={STEPS}",
    "trainer.global_batch_size=8",  # the same 8 sequences per step on every mesh
    "trainer.checkpoint_every=10",
]
# Llama blocks (RMSNorm, RoPE, SwiGLU) with grouped-query attention: 4 query heads, 2 KV heads
LLAMA = ["model.flavour=llama", "model.n_head=4", "model.n_kv_head=2"]
MESHES = {  # name -> (processes, overrides)
    "tp2_gpt2": (2, ["strategy=fsdp", "strategy.tp=2"]),
    "fsdp2xtp2_llama": (4, [*LLAMA, "strategy=fsdp", "strategy.tp=2", "strategy.dp_shard=2"]),
    # 4 data-parallel ranks of 2 sequences each: HSDP, shards in pairs, 2 replicas
    "hsdp2x2_llama": (4, [*LLAMA, "strategy=fsdp", "strategy.dp_replicate=2", "trainer.micro_batch_size=2"]),
    # 2 stages of one block each, 1F1B over the step's 2 micro-batches of 4 sequences
    "pp2_llama": (2, [*LLAMA, "strategy=fsdp", "strategy.pp=2"]),
}
# one data-parallel rank of 4 sequences: the same validation batches as the one process
SAME_EVAL = ("tp2_gpt2", "pp2_llama")
KILLED = ("hsdp2x2_llama", "pp2_llama")  # killed after the step-10 checkpoint and resumed
# the pipelined run's step-10 checkpoint, resumed on another mesh of the same 2 ranks
RELAID = ["strategy.pp=1", "strategy.tp=2"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """flavour -> (losses, final val loss) of the one-process run with that model (strategy=single)."""
    runs = {}
    for flavour, extra in (("gpt2", []), ("llama", LLAMA)):
        cfg = compose_config([*TINY, *RUN[1:], *extra, f"out_dir={tmp_path_factory.mktemp(flavour)}"])
        train(cfg)
        runs[flavour] = train_losses(Path(cfg.out_dir)), val_loss(Path(cfg.out_dir))
    return runs


def val_loss(run_dir: Path) -> float:
    """The val loss of the evaluation every run ends with."""
    return [r["val_loss"] for r in records(run_dir) if "val_loss" in r][-1]


OLD_TORCH = torch.__version__ < GLOO_PIPELINE_TORCH  # its pipelining fails over gloo: refused in one line


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.skipif(OLD_TORCH and "pp" in name, reason="pp needs torch 2.13"))
        for name in MESHES
    ],
)
def test_mesh_matches_one_process(single, tmp_path: Path, name: str) -> None:
    nproc, overrides = MESHES[name]
    result = check(torchrun([*RUN, *overrides, f"out_dir={tmp_path}"], nproc=nproc, timeout=300))
    assert "  strategy           fsdp" in result.stdout
    losses = train_losses(tmp_path)
    reference, reference_val = single[name.rsplit("_", 1)[-1]]
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1] - 0.5  # it trains
    assert max_difference(losses, reference) < LOSS_TOLERANCE
    if name in SAME_EVAL:  # evaluation runs through the mesh too
        assert abs(val_loss(tmp_path) - reference_val) < LOSS_TOLERANCE
    if name in KILLED:  # killed after the step-10 checkpoint, the same command resumes it
        killed = tmp_path.parent / f"{name}_killed"
        kill(killed, [*RUN, *overrides], nproc)
        if name == "pp2_llama":  # before the resume: a copy goes on as tp=2 from the pipeline's checkpoint
            relaid = tmp_path.parent / f"{name}_relaid"
            shutil.copytree(killed, relaid)
            result = check(
                torchrun([*RUN, *overrides, *RELAID, f"out_dir={relaid}"], nproc=nproc, timeout=300)
            )
            assert "strategy.pp: 2 -> 1; strategy.tp: 1 -> 2" in result.stdout and "step_10" in result.stdout
            assert max_difference(train_losses(relaid), losses) < LOSS_TOLERANCE
        result = check(torchrun([*RUN, *overrides, f"out_dir={killed}"], nproc=nproc, timeout=300))
        assert "resumed from" in result.stdout and "step_10" in result.stdout
        assert train_losses(killed) == losses  # fp32 on CPU, the same reduction order: bit-identical


def kill(run_dir: Path, overrides: list[str], nproc: int) -> None:
    """SIGKILL the launcher and every rank once 12 steps are logged, as a lost node would."""
    overrides = [*overrides, f"out_dir={run_dir}"]
    launcher = subprocess.Popen(
        torchrun_command(overrides, nproc),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + 300
    while launcher.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 12:
            break
        time.sleep(0.01)
    ranks = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout
    for pid in [launcher.pid, *map(int, ranks.split())]:  # torchrun gives each rank its own session
        os.kill(pid, signal.SIGKILL)
    launcher.wait()
