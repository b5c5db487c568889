"""Everything a run decides before it touches a device, a process group or a file.

`plan_run` resolves what the composed config leaves open (the strategy for the world size, the model and
tokenizer of `trainer.init_from`, the vocabulary, the length of a token budget) and checks everything
that can be checked without training: devices against NPROC, batch divisibility, the data and tokenizer
paths, the checkpoint to resume and whether this config may continue it. A dry run prints the plan; a
real run builds from it, so both see the same errors, and nothing on disk moves before they pass.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from gptforge.config import Config
from gptforge.data import Tokenizer, build_data_tokenizer, load_tokenizer
from gptforge.data.pipeline import DATA_SOURCES, trains_its_tokenizer
from gptforge.data.tokenizers import TOKENIZER_FILE, tokenizer_class
from gptforge.errors import ConfigError
from gptforge.trainer.checkpoint import InitSource, adopt_architecture, read_config, resolve_init_source
from gptforge.trainer.devices import local_world_size, resolve_device, resolve_precision
from gptforge.trainer.loggers import check_logger_packages
from gptforge.trainer.resume import check_resume, find_resume_checkpoint
from gptforge.trainer.strategies import resolve_strategy_name, strategy_class
from gptforge.trainer.strategies.mesh import MeshShape, resolve_mesh


@dataclass(frozen=True)
class World:
    """This process's place in the job, as the launcher set it (a world of one without a launcher)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls) -> World:
        env = os.environ
        return cls(
            int(env.get("RANK", 0)),
            int(env.get("WORLD_SIZE", 1)),
            int(env.get("LOCAL_RANK", 0)),
            local_world_size(),
        )


@dataclass
class RunPlan:
    """A validated run: the resolved config and what it starts from."""

    cfg: Config  # resolved: strategy name, model.* (vocabulary, init_from's architecture), max_steps
    run_dir: Path
    world: World
    device: torch.device
    grad_accum_steps: int
    resume_from: Path | None  # the checkpoint this start continues (None: a fresh start)
    init: InitSource | None  # the weights a fresh start loads (None: random initialisation)
    tokenizer: Tokenizer | None  # None: tokenizer=bpe without a path, trained on the corpus at build
    mesh: MeshShape = field(default_factory=MeshShape)  # the ranks along pp, dp_replicate, dp_shard, tp

    @property
    def tokens_per_step(self) -> int:
        trainer = self.cfg.trainer
        return (
            trainer.micro_batch_size
            * self.grad_accum_steps
            * self.mesh.data_parallel_size
            * self.cfg.model.block_size
        )


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


def check_fine_tuning(cfg: Config) -> None:
    """data=sft adapts pretrained weights: without `trainer.init_from` it would fine-tune noise."""
    if DATA_SOURCES[cfg.data.source].fine_tunes and not cfg.trainer.init_from:
        raise ConfigError(
            "data=sft fine-tunes a pretrained model but trainer.init_from is not set; set "
            "trainer.init_from=<checkpoint> (a checkpoint or run directory, a .safetensors file or hf:<dir>)"
        )


def plan_run(cfg: Config, run_dir: Path, world: World | None = None) -> RunPlan:
    """Resolve and check `cfg` for a run in `run_dir` on `world`; reads files, writes none."""
    world = world or World.from_env()
    cfg = replace(
        cfg, strategy=replace(cfg.strategy, name=resolve_strategy_name(cfg.strategy.name, world.world_size))
    )
    device = resolve_device(cfg.trainer.device, world.local_rank, world.local_world_size)
    resolve_precision(cfg.trainer.precision, device)  # fp16 or fp8 where the device cannot: one line now
    check_fine_tuning(cfg)
    check_logger_packages(cfg.logger)
    mesh = resolve_mesh(cfg.strategy, world.world_size)  # one line naming the keys if they do not fit
    data_ranks = mesh.data_parallel_size  # tp and pp peers share one replica's batch
    accum = grad_accum_steps(cfg.trainer.micro_batch_size, cfg.trainer.global_batch_size, data_ranks)
    resume_from = find_resume_checkpoint(cfg, run_dir, world.rank == 0)

    init = None
    if cfg.trainer.init_from:
        if resume_from is not None:  # the run adopted init_from's architecture when it started: keep it
            cfg = _adopt(cfg, read_config(resume_from))
        else:
            init = resolve_init_source(cfg.trainer.init_from)
            cfg = _adopt_init(cfg, init)
    tokenizer = _plan_tokenizer(cfg, run_dir, init)
    vocab = tokenizer.vocab_size if tokenizer is not None else cfg.tokenizer.vocab_size
    model = replace(
        cfg.model, vocab_size=resolve_vocab_size(cfg.model.vocab_size, vocab, cfg.model.vocab_multiple)
    )
    model = model.with_eos(tokenizer.eos_id) if tokenizer is not None else model
    cfg = replace(cfg, model=model)
    cfg = _resolve_length(cfg, accum, data_ranks)
    strategy_class(cfg.strategy.name).check_plan(cfg, mesh, accum)
    check_resume(cfg, run_dir, resume_from, world.world_size, world.rank == 0)
    return RunPlan(cfg, run_dir, world, device, accum, resume_from, init, tokenizer, mesh)


def _adopt(cfg: Config, saved: Config) -> Config:
    """`cfg` with the architecture and tokenizer of a run it continues."""
    return replace(cfg, model=adopt_architecture(cfg.model, saved.model), tokenizer=saved.tokenizer)


def _adopt_init(cfg: Config, init: InitSource) -> Config:
    """`cfg` with the architecture and tokenizer saved with the init_from weights, where they are known."""
    if init.model is not None:
        cfg = replace(cfg, model=adopt_architecture(cfg.model, init.model))
    if init.tokenizer_dir is not None:
        saved = load_tokenizer(init.tokenizer_dir)
        path = str(init.tokenizer_dir) if tokenizer_class(saved.name).reads_file else None
        cfg = replace(
            cfg, tokenizer=replace(cfg.tokenizer, name=saved.name, path=path, eos_token=saved.eos_token)
        )
    elif tokenizer_class(cfg.tokenizer.name).learns_from_corpus and cfg.tokenizer.path is None:
        raise ConfigError(
            f"trainer.init_from={init.spec} has no {TOKENIZER_FILE} beside it and "
            f"tokenizer={cfg.tokenizer.name}, learned from a corpus, cannot be rebuilt as the weights saw "
            "it; give the checkpoint directory instead"
        )
    return cfg


def _plan_tokenizer(cfg: Config, run_dir: Path, init: InitSource | None) -> Tokenizer | None:
    """The run's tokenizer: the one saved in the run directory (so resumes decode alike), the one saved
    with the init_from weights, the configured one, or None when a BPE is to be trained on the corpus."""
    if (run_dir / TOKENIZER_FILE).exists() and cfg.trainer.resume != "never":
        return load_tokenizer(run_dir)
    if init is not None and init.tokenizer_dir is not None:
        return load_tokenizer(init.tokenizer_dir)
    if trains_its_tokenizer(cfg.data, cfg.tokenizer):
        return None
    return build_data_tokenizer(cfg.data, cfg.tokenizer)


def _resolve_length(cfg: Config, accum: int, data_ranks: int) -> Config:
    """max_steps from `trainer.max_tokens` when set, and a warm-up shorter than the run."""
    trainer = cfg.trainer
    if trainer.max_tokens is not None:
        tokens_per_step = trainer.micro_batch_size * accum * data_ranks * cfg.model.block_size
        cfg = replace(
            cfg, trainer=replace(trainer, max_steps=math.ceil(trainer.max_tokens / tokens_per_step))
        )
    warmup = cfg.scheduler.warmup_steps
    if warmup >= cfg.trainer.max_steps and cfg.scheduler.name != "constant":
        budget = f" (trainer.max_tokens={trainer.max_tokens:g})" if trainer.max_tokens is not None else ""
        raise ConfigError(
            f"scheduler.warmup_steps={warmup} is not shorter than the run's {cfg.trainer.max_steps} steps"
            f"{budget}; the run would never leave warm-up"
        )
    return cfg
