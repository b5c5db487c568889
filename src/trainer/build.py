"""From a validated `Config` to a ready `Trainer`: the only place that knows how the parts fit."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError, safe_open

from gptforge.config import Config, TokenizerConfig
from gptforge.data import (
    BatchLayout,
    Tokenizer,
    build_data,
    build_data_tokenizer,
    build_tokenizer,
    load_tokenizer,
)
from gptforge.data.tokenizers import TOKENIZER_FILE
from gptforge.errors import CheckpointError, ConfigError
from gptforge.eval.evaluator import build_task_evaluator
from gptforge.models import GPT
from gptforge.models.lora import apply_lora
from gptforge.trainer.loop import Trainer
from gptforge.trainer.pretrained import HF_PREFIX, resolve_init_from
from gptforge.trainer.resume import holds_a_run, resume_point, set_aside
from gptforge.trainer.strategies import Strategy, build_strategy
from gptforge.trainer.strategies.consolidated import load_initial_weights, resolve_checkpoint


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
    """Refuse to start over on an earlier run unless asked; then set its files aside, never delete."""
    if cfg.trainer.resume != "never" or not holds_a_run(run_dir):
        return
    if not cfg.trainer.overwrite:
        raise ConfigError(
            f"out_dir {run_dir} holds an earlier run and trainer.resume=never; "
            "pass trainer.overwrite=true to start over (its files are moved aside, not deleted) "
            "or use a new out_dir"
        )
    if is_main:
        metrics_file = cfg.logger.jsonl.filename if cfg.logger.jsonl else "metrics.jsonl"
        moved = set_aside(run_dir, metrics_file)
        print(f"gptforge: moved the earlier run aside: {', '.join(p.name for p in moved)}", flush=True)


def prepare_tokenizer(cfg: Config, run_dir: Path) -> Tokenizer:
    """The run's tokenizer: the one saved in the run directory (so resumes decode alike), else a new one."""
    if (run_dir / "tokenizer_meta.json").exists() and cfg.trainer.resume != "never":
        return load_tokenizer(run_dir)
    if cfg.data.source == "sft":
        return pretrained_tokenizer(cfg.trainer.init_from, cfg.tokenizer)
    return build_data_tokenizer(cfg.data, cfg.tokenizer)


def check_fine_tuning(cfg: Config) -> None:
    """data=sft adapts pretrained weights: without `trainer.init_from` it would fine-tune noise."""
    if cfg.data.source == "sft" and not cfg.trainer.init_from:
        raise ConfigError(
            "data=sft fine-tunes a pretrained model but trainer.init_from is not set; set "
            "trainer.init_from=<checkpoint> (a checkpoint or run directory, a .safetensors file or hf:<dir>)"
        )


def pretrained_tokenizer(init_from: str, tokenizer_cfg: TokenizerConfig) -> Tokenizer:
    """The tokenizer saved with the `trainer.init_from` weights, so that fine-tuning encodes as they were
    trained; the configured one where none was saved beside them (not possible for `char`)."""
    path = Path(init_from.removeprefix(HF_PREFIX))
    if not path.exists():
        raise CheckpointError(
            f"trainer.init_from={init_from} does not exist; give a checkpoint or run directory, "
            "a .safetensors file or hf:<dir>"
        )
    if path.is_file():  # beside the file, or in the checkpoint it was consolidated from
        places = [path.parent, *_consolidated_from(path)]
    else:
        places = [path if init_from.startswith(HF_PREFIX) else resolve_checkpoint(path)]
    directory = next((place for place in places if (place / TOKENIZER_FILE).is_file()), None)
    if directory is not None:
        tokenizer = load_tokenizer(directory)
        if tokenizer.name != tokenizer_cfg.name:
            raise ConfigError(
                f"trainer.init_from={init_from} was trained with tokenizer={tokenizer.name}, "
                f"not tokenizer={tokenizer_cfg.name}; set tokenizer={tokenizer.name}"
            )
        return tokenizer
    if tokenizer_cfg.name == "char":
        raise ConfigError(
            f"trainer.init_from={init_from} has no {TOKENIZER_FILE} beside it and tokenizer=char cannot be "
            "rebuilt without its alphabet; give the checkpoint directory instead"
        )
    return build_tokenizer(tokenizer_cfg)


def _consolidated_from(path: Path) -> list[Path]:
    """The checkpoint directory a consolidated .safetensors file was made from, if its metadata says."""
    try:
        with safe_open(str(path), framework="pt") as weights:
            source = (weights.metadata() or {}).get("source")
        return [Path(source)] if source else []
    except SafetensorError as err:
        raise CheckpointError(f"trainer.init_from={path} is not a safetensors file: {err}") from None


def build_trainer(cfg: Config, run_dir: Path, strategy: Strategy | None = None) -> Trainer:
    """Tokenizer, data, model and strategy for `cfg`, wired into a Trainer writing to `run_dir`."""
    tcfg = cfg.trainer
    check_fine_tuning(cfg)
    strategy = strategy or build_strategy(cfg.strategy, tcfg)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    prepare_run_dir(cfg, run_dir, strategy.is_main)
    strategy.barrier()

    tokenizer = prepare_tokenizer(cfg, run_dir)
    vocab_size = resolve_vocab_size(cfg.model.vocab_size, tokenizer.vocab_size, cfg.model.vocab_multiple)
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=vocab_size))
    accum = grad_accum_steps(tcfg.micro_batch_size, tcfg.global_batch_size, strategy.world_size)
    resume_from = resume_point(cfg, run_dir, strategy.world_size, strategy.is_main)
    # a resume continues from its own checkpoint: the init_from weights need not exist any more
    init_from = resolve_init_from(tcfg.init_from, cfg.model) if tcfg.init_from and not resume_from else None
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
    task_evaluator = build_task_evaluator(cfg.eval, tokenizer, cfg.model.block_size, cfg.data)

    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = GPT(cfg.model)
    if init_from:  # before the strategy shards it
        load_initial_weights(model, init_from)
    apply_lora(model, cfg.model.lora)  # freezes the base weights when model.lora.rank > 0
    flops_per_token = model.flops_per_token()
    strategy.setup(model, cfg.optim, compile=tcfg.compile)
    seed_everything(cfg.seed + strategy.rank)  # dropout differs across ranks, as it should
    strategy.barrier()  # every rank has read the run directory: now it may change
    if strategy.is_main:  # only now: a start refused above leaves the run directory as it was
        tokenizer.save(run_dir)
        OmegaConf.save(OmegaConf.structured(cfg), run_dir / "config.yaml")
    return Trainer(
        cfg,
        run_dir,
        strategy,
        tokenizer,
        train_loader,
        make_val_batches,
        accum,
        flops_per_token,
        resume_from,
        task_evaluator,
    )


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
