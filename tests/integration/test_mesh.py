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

import json
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
def test_mesh_matches_one_process_and_resumes_exactly_after_a_kill(single, tmp_path: Path, name: str) -> None:
    """Each mesh trains killed after its step-10 checkpoint, as a lost node would leave it, then the same
    command resumes it: the steps the killed attempt logged after step 10 come out bit for bit again,
    and the whole curve matches the one process."""
    nproc, overrides = MESHES[name]
    before_kill = kill(tmp_path, [*RUN, *overrides, f"out_dir={tmp_path}"], nproc)
    assert max(before_kill) > 10
    if name == "pp2_llama":  # first, a copy goes on as tp=2 from the pipeline's checkpoint
        relaid = tmp_path.parent / f"{name}_relaid"
        shutil.copytree(tmp_path, relaid)
        result = check(torchrun([*RUN, *overrides, *RELAID, f"out_dir={relaid}"], nproc=nproc, timeout=300))
        assert "strategy.pp: 2 -> 1; strategy.tp: 1 -> 2" in result.stdout and "step_10" in result.stdout
        relaid_losses = train_losses(relaid)
    result = check(torchrun([*RUN, *overrides, f"out_dir={tmp_path}"], nproc=nproc, timeout=300))
    assert "  strategy           fsdp" in result.stdout
    assert "resumed from" in result.stdout and "step_10" in result.stdout
    losses = train_losses(tmp_path)  # the resumed attempt's steps 11 on replace the killed one's
    assert all(losses[step] == loss for step, loss in before_kill.items())  # fp32, same order: bit-identical
    reference, reference_val = single[name.rsplit("_", 1)[-1]]
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1] - 0.5  # it trains
    assert max_difference(losses, reference) < LOSS_TOLERANCE
    if name in SAME_EVAL:  # evaluation runs through the mesh too
        assert abs(val_loss(tmp_path) - reference_val) < LOSS_TOLERANCE
    if name == "pp2_llama":
        assert max_difference(relaid_losses, losses) < LOSS_TOLERANCE


def kill(run_dir: Path, overrides: list[str], nproc: int) -> dict[int, float]:
    """SIGKILL the launcher and every rank once 12 steps are logged; returns the losses logged by then."""
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
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    whole = [json.loads(line) for line in lines if line.endswith("}")]  # not a line the kill cut short
    return {record["step"]: record["loss"] for record in whole if "loss" in record}
