"""From a validated `Config` to a ready `Trainer`: the only place that knows how the parts fit."""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from gptforge.config import Config
from gptforge.data import BatchLayout, Tokenizer, build_data, build_data_tokenizer, load_tokenizer
from gptforge.errors import ConfigError
from gptforge.models import GPT
from gptforge.models.lora import apply_lora
from gptforge.trainer.loop import Trainer
from gptforge.trainer.strategies import Strategy, build_strategy
from gptforge.trainer.strategies.consolidated import load_initial_weights


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def grad_accum_steps(micro_batch_size: int, global_batch_size: int | None, world_size: int) -> int:
    """Micro-batches per optimizer step so that the global batch stays what the user set."""
    if global_batch_size is None:
        return 1
    per_step = micro_batch_size * world_size
    if global_batch_size % per_step:
        raise ConfigError(
            f"trainer.global_batch_size={global_batch_size} does not divide into micro_batch_size="
            f"{micro_batch_size} x {world_size} ranks; make it a multiple of {per_step}"
        )
    return global_batch_size // per_step


def resolve_vocab_size(requested: int | None, tokenizer_vocab: int, multiple: int) -> int:
    """The model's vocabulary: the tokenizer's, rounded up to `multiple`, unless set (and large enough)."""
    if requested is None:
        return -(-tokenizer_vocab // multiple) * multiple
    if requested < tokenizer_vocab:
        raise ConfigError(
            f"model.vocab_size={requested} is smaller than the tokenizer's vocabulary ({tokenizer_vocab}); "
            "leave it unset to follow the tokenizer"
        )
    return requested


def prepare_run_dir(cfg: Config, run_dir: Path, is_main: bool) -> None:
    """Refuse to start over on an earlier run unless asked; then set its checkpoints aside, never delete."""
    checkpoints = run_dir / "checkpoints"
    if cfg.trainer.resume != "never" or not checkpoints.exists() or not any(checkpoints.iterdir()):
        return
    if not cfg.trainer.overwrite:
        raise ConfigError(
            f"out_dir {run_dir} holds checkpoints of an earlier run and trainer.resume=never; "
            "pass trainer.overwrite=true to start over (they are moved aside, not deleted) "
            "or use a new out_dir"
        )
    if is_main:
        aside = run_dir / f"checkpoints.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        checkpoints.rename(aside)
        print(f"gptforge: moved earlier checkpoints to {aside}", flush=True)


def prepare_tokenizer(cfg: Config, run_dir: Path) -> Tokenizer:
    """The run's tokenizer: the one saved in the run directory (so resumes decode alike), else a new one."""
    if (run_dir / "tokenizer_meta.json").exists() and cfg.trainer.resume != "never":
        return load_tokenizer(run_dir)
    return build_data_tokenizer(cfg.data, cfg.tokenizer)


def build_trainer(cfg: Config, run_dir: Path, strategy: Strategy | None = None) -> Trainer:
    """Tokenizer, data, model and strategy for `cfg`, wired into a Trainer writing to `run_dir`."""
    tcfg = cfg.trainer
    strategy = strategy or build_strategy(cfg.strategy, tcfg)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    prepare_run_dir(cfg, run_dir, strategy.is_main)
    strategy.barrier()

    tokenizer = prepare_tokenizer(cfg, run_dir)
    vocab_size = resolve_vocab_size(cfg.model.vocab_size, tokenizer.vocab_size, cfg.model.vocab_multiple)
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=vocab_size))
    if strategy.is_main:
        tokenizer.save(run_dir)
        OmegaConf.save(OmegaConf.structured(cfg), run_dir / "config.yaml")

    accum = grad_accum_steps(tcfg.micro_batch_size, tcfg.global_batch_size, strategy.world_size)
    layout = BatchLayout(
        cfg.model.block_size,
        tcfg.micro_batch_size,
        accum,
        strategy.rank,
        strategy.world_size,
        cfg.seed,
        tcfg.eval_batches,
    )
    train_loader, make_val_batches = build_data(cfg.data, tokenizer, layout)

    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = GPT(cfg.model)
    if tcfg.init_from:  # before the strategy shards it; a checkpoint in run_dir (resume) still wins
        load_initial_weights(model, tcfg.init_from)
    apply_lora(model, cfg.model.lora)  # freezes the base weights when model.lora.rank > 0
    flops_per_token = model.flops_per_token()
    strategy.setup(model, cfg.optim, compile=tcfg.compile)
    seed_everything(cfg.seed + strategy.rank)  # dropout differs across ranks, as it should
    return Trainer(cfg, run_dir, strategy, tokenizer, train_loader, make_val_batches, accum, flops_per_token)


def train(cfg: Config, run_dir: Path | None = None) -> dict:
    """Build and fit one run; prints a sample at the end when `trainer.sample_tokens` is set."""
    trainer = build_trainer(cfg, Path(run_dir or cfg.out_dir))
    try:
        metrics = trainer.fit()
        if cfg.trainer.sample_tokens:
            # every rank samples in step: with sharded weights (FSDP, ZeRO-3) each forward gathers them
            text = trainer.sample(cfg.trainer.sample_tokens)
            if trainer.strategy.is_main:
                print("\n--- sample ---\n" + text + "\n--------------")
        return metrics
    finally:
        trainer.strategy.teardown()
