"""Data-parallel strategies with real torchrun processes (gloo on CPU): same data, same losses.

ZeRO-2 runs through launch.sh with LAUNCHER=deepspeed, two "nodes" through launch.sh with NNODES=2.

Tolerance: every run here is fp32 on CPU from the same seed and the same tokens (the loader splits each
step's global batch rank-major). Strategies differ only in the order floating-point sums are taken
(all-reduce vs reduce-scatter vs one local batch), about 1e-7 relative per step; over 24 AdamW steps
the logged losses stay within ~1e-6 of each other. LOSS_TOLERANCE = 1e-4 leaves room for that drift
while a real bug (gradients not averaged, a micro-batch scaled twice, a skipped or doubled step, a shard
not loaded) moves the loss by 1e-2 or more within a few steps.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launch_utils import (
    ROOT,
    TINY_RUN,
    check,
    finish,
    free_port,
    launch_sh,
    max_difference,
    torchrun,
    train_losses,
)

from gptforge.trainer import train

pytestmark = pytest.mark.multiprocess

LOSS_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = 1e-4  # the same drift, seen in the weights after 24 steps (measured: ~6e-6)
STEPS = 24
# a schedule fixed in steps, so a run stopped at step 12 and resumed continues on the same one
SCHEDULE = [f"trainer.max_steps={STEPS}", f"scheduler.decay_steps={STEPS}", "trainer.checkpoint_every=12"]
STRATEGY_OVERRIDES = {
    "ddp": [],  # the default, strategy=auto: ddp for several processes
    "fsdp": ["strategy=fsdp"],
    "deepspeed_zero1": ["strategy=deepspeed_zero1"],
    "deepspeed_zero2": ["strategy=deepspeed_zero2"],
    "deepspeed_zero3": ["strategy=deepspeed_zero3"],
}
# these also stop at step 12 and resume from their own checkpoint: the sharded save/load paths
RESUMED = {"fsdp", "deepspeed_zero3"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """name -> run directory of a 2-rank, 24-step run of that strategy (each trained once per module)."""
    runs: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in runs:
            out_dir = tmp_path_factory.mktemp(name)
            overrides = [*TINY_RUN, *SCHEDULE, *STRATEGY_OVERRIDES[name], f"out_dir={out_dir}"]
            if name in RESUMED:
                check(torchrun([*overrides, "trainer.max_steps=12"]))
                if name == "fsdp":  # the second half recomputes activations: checkpoints must not care
                    overrides.append("strategy.activation_checkpointing=true")
            if name == "deepspeed_zero2":  # through DeepSpeed's own launcher, as LAUNCHER=deepspeed does
                launcher = {"LAUNCHER": "deepspeed", "NPROC": "2", "MASTER_PORT": str(free_port())}
                result = check(finish(launch_sh(overrides, **launcher)))
                chatter = result.stdout + result.stderr  # the launcher's narration stays off the console
                assert "[INFO]" not in chatter and "CUDA_VISIBLE_DEVICES" not in chatter, chatter[:2000]
            else:
                result = check(torchrun(overrides))
            if name in RESUMED:
                assert "resumed from" in result.stdout
            if name == "ddp":
                assert "  strategy           ddp" in result.stdout
                assert "name: ddp" in (out_dir / "config.yaml").read_text()
            runs[name] = out_dir
        return runs[name]

    return run


@pytest.mark.parametrize(
    "one_rank", [["trainer.micro_batch_size=8"], ["trainer.global_batch_size=8"]], ids=["2B", "B_accum2"]
)
def test_ddp_two_ranks_match_one_rank(trained, tiny_config, tmp_path: Path, one_rank: list[str]) -> None:
    ddp = train_losses(trained("ddp"))
    cfg = tiny_config(*TINY_RUN[1:], *SCHEDULE, *one_rank, f"out_dir={tmp_path / 'one_rank'}")
    train(cfg, Path(cfg.out_dir))

    assert sorted(ddp) == list(range(1, STEPS + 1))
    assert ddp[STEPS] < ddp[1] - 0.5  # it trains
    assert max_difference(ddp, train_losses(Path(cfg.out_dir))) < LOSS_TOLERANCE


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3"])
def test_sharded_strategies_match_ddp(trained, strategy: str) -> None:
    ddp, sharded = train_losses(trained("ddp")), train_losses(trained(strategy))
    assert max_difference(ddp, sharded) < LOSS_TOLERANCE


def test_two_nodes_on_one_machine_match_one_node(trained, tmp_path: Path) -> None:
    # NNODES=2 through launch.sh: two torchrun launches, one rank each, rendezvous on loopback
    overrides = [*TINY_RUN, *SCHEDULE, "strategy=ddp", f"out_dir={tmp_path / 'run'}"]
    port = str(free_port())
    nodes = [
        launch_sh(overrides, NPROC="1", NNODES="2", NODE_RANK=str(rank), MASTER_PORT=port) for rank in (0, 1)
    ]
    for node in nodes:
        check(finish(node))
    assert max_difference(train_losses(trained("ddp")), train_losses(tmp_path / "run")) < LOSS_TOLERANCE


def test_checkpoints_consolidate_and_start_a_run_under_another_strategy(
    trained, tiny_config, tmp_path: Path
) -> None:
    # every backend's checkpoint consolidates to the same weights as DDP's plain state dict
    from gptforge.trainer.checkpoint import consolidate_checkpoint

    reference, _ = consolidate_checkpoint(trained("ddp"))
    for name in ("fsdp", "deepspeed_zero1", "deepspeed_zero3"):
        state, metadata = consolidate_checkpoint(trained(name))
        assert sorted(state) == sorted(reference) and metadata["source"].endswith(f"step_{STEPS}")
        assert max((state[k] - reference[k]).abs().max().item() for k in reference) < WEIGHT_TOLERANCE

    fsdp_file = tmp_path / "fsdp.safetensors"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "consolidate.py"),
            str(trained("fsdp")),
            "--out",
            str(fsdp_file),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and fsdp_file.is_file(), result.stderr

    # FSDP's file under ZeRO-2 on 2 ranks, and ZeRO-3's checkpoint directory under `single` on 1 process
    new_run = [
        *TINY_RUN[1:],
        "trainer.max_steps=6",
        "trainer.global_batch_size=8",  # 2 ranks x 4, or 1 rank x 4 x 2 micro-batches: the same tokens
        "scheduler=constant",
        "scheduler.warmup_steps=0",
    ]
    zero2_dir = tmp_path / "zero2"
    check(
        torchrun(
            [
                "experiment=smoke",
                *new_run,
                "strategy=deepspeed_zero2",
                f"trainer.init_from={fsdp_file}",
                f"out_dir={zero2_dir}",
            ]
        )
    )
    single = tiny_config(
        *new_run, f"trainer.init_from={trained('deepspeed_zero3')}", f"out_dir={tmp_path / 'one'}"
    )
    train(single, Path(single.out_dir))
    zero2, single_losses = train_losses(zero2_dir), train_losses(Path(single.out_dir))
    assert max_difference(zero2, single_losses) < LOSS_TOLERANCE

    # the next loss is the trained model's, not a fresh one's: recompute step 1's loss from the file
    expected = first_step_loss(fsdp_file, single)
    assert abs(zero2[1] - expected) < LOSS_TOLERANCE
    assert expected < train_losses(trained("ddp"))[1] - 0.5


def first_step_loss(weights: Path, cfg) -> float:
    """The loss of `weights` on the global batch a new run draws for its first step."""
    from gptforge.data import RandomWindowLoader, build_tokenizer, load_corpus, to_token_array
    from gptforge.models import GPT
    from gptforge.trainer.build import resolve_vocab_size
    from gptforge.trainer.checkpoint import load_initial_weights

    train_text, val_text = load_corpus(cfg.data)
    tokenizer = build_tokenizer(cfg.tokenizer, train_text + val_text)
    tokens = to_token_array(tokenizer.encode(train_text), tokenizer.vocab_size)
    loader = RandomWindowLoader(tokens, cfg.model.block_size, cfg.trainer.global_batch_size, seed=cfg.seed)
    vocab_size = resolve_vocab_size(cfg.model.vocab_size, tokenizer.vocab_size, cfg.model.vocab_multiple)
    model = GPT(dataclasses.replace(cfg.model, vocab_size=vocab_size))
    load_initial_weights(model, weights)
    input_ids, targets = next(loader)
    with torch.no_grad():
        return model(input_ids, targets)[1].item()


def test_batch_that_does_not_divide_across_ranks_fails_in_one_line(tmp_path: Path) -> None:
    result = torchrun([*TINY_RUN, "strategy=ddp", "trainer.global_batch_size=12", f"out_dir={tmp_path}"])
    assert result.returncode != 0
    expected = (
        "error: trainer.global_batch_size=12 does not divide into micro_batch_size=4 x 2 ranks; "
        "make it a multiple of 8"
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all(line.startswith(expected) for line in errors)  # one line from each rank


def test_more_processes_than_gpus_fails_in_one_line(tmp_path: Path) -> None:
    result = torchrun([*TINY_RUN, "strategy=ddp", "trainer.device=cuda", f"out_dir={tmp_path}"])
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all(line.startswith("error: NPROC=2 processes per node") for line in errors)
