"""From a validated `Config` to a ready `Trainer`: the only place that knows how the parts fit."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gptforge.config import Config
from gptforge.data import BatchLayout, Tokenizer, build_data
from gptforge.data.pipeline import train_corpus_tokenizer
from gptforge.data.tokenizers import ByteTokenizer
from gptforge.errors import ConfigError, GptforgeError
from gptforge.eval.evaluator import build_task_evaluator
from gptforge.models import GPT
from gptforge.models.lora import apply_lora, lora_parameter_init
from gptforge.trainer import checkpoint as ckpt
from gptforge.trainer.callbacks import Callback
from gptforge.trainer.checkpoint import load_initial_weights
from gptforge.trainer.devices import precision_name, resolve_precision
from gptforge.trainer.fp8 import convert_to_fp8
from gptforge.trainer.initial_weights import full_tensor_groups
from gptforge.trainer.lock import RunDirectoryLock
from gptforge.trainer.loop import Trainer, finished_message
from gptforge.trainer.metrics import BuildMemory, current_memory_bytes, peak_flops_per_sec
from gptforge.trainer.plan import RunPlan, grad_accum_steps, plan_run, resolve_vocab_size
from gptforge.trainer.resume import holds_a_run, set_aside
from gptforge.trainer.strategies import Strategy, build_strategy
from gptforge.trainer.strategies.base import StepLayout
from gptforge.trainer.summary import RunSummary, describe_run

__all__ = ["build_trainer", "dry_run", "grad_accum_steps", "resolve_vocab_size", "train"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def corpus_tokenizer(plan: RunPlan, strategy: Strategy) -> tuple[RunPlan, Tokenizer]:
    """The plan's tokenizer, or one BPE trained on the run's training corpus by rank 0 and sent to all."""
    if plan.tokenizer is not None:
        return plan, plan.tokenizer
    cfg = plan.cfg
    trained = failure = None
    if strategy.is_main:
        try:
            trained = train_corpus_tokenizer(cfg.data, cfg.tokenizer)
        except GptforgeError as err:  # sent on, so no rank waits for a tokenizer that never comes
            failure = err
    tokenizer, failure = strategy.broadcast_object((trained, failure))
    if failure is not None:
        raise failure
    vocab_size = resolve_vocab_size(None, tokenizer.vocab_size, cfg.model.vocab_multiple)
    # the planned size was the training target
    model = replace(cfg.model, vocab_size=vocab_size).with_eos(tokenizer.eos_id)
    return replace(plan, cfg=replace(cfg, model=model), tokenizer=tokenizer), tokenizer


def build_trainer(
    cfg: Config, run_dir: Path, strategy: Strategy | None = None, callbacks: list[Callback] | None = None
) -> Trainer:
    """Tokenizer, data, model and strategy for `cfg`, wired into a Trainer writing to `run_dir`;
    `callbacks` go after the run's own (`default_callbacks`: loggers, LoRA export, injected faults).

    Everything is checked (`plan_run`, then the data as it opens) before an earlier run is moved aside
    or anything is written to the run directory.
    """
    plan = plan_run(cfg, run_dir)
    cfg, tcfg = plan.cfg, plan.cfg.trainer
    strategy = strategy or build_strategy(cfg.strategy, tcfg)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    plan, tokenizer = corpus_tokenizer(plan, strategy)
    cfg = plan.cfg
    layout = BatchLayout(
        cfg.model.block_size,
        tcfg.micro_batch_size,
        plan.grad_accum_steps,
        strategy.data_parallel_rank,  # tp and pp peers train on the same share of the batch
        strategy.data_parallel_size,
        cfg.seed,
        tcfg.eval_batches,
        pin_memory=strategy.device.type == "cuda",
    )
    train_loader, make_val_batches = build_data(cfg.data, tokenizer, layout)
    task_evaluator = build_task_evaluator(cfg.eval, tokenizer, cfg.model.block_size, cfg.data)
    lock = lock_run_dir(run_dir, strategy)  # everything is checked: from here on the run directory is ours
    try:
        trainer = _build_model_and_trainer(
            plan, strategy, tokenizer, train_loader, make_val_batches, task_evaluator, lock
        )
    except BaseException:
        lock.release()
        raise
    trainer.callbacks.extend(callbacks or [])
    return trainer


def lock_run_dir(run_dir: Path, strategy: Strategy) -> RunDirectoryLock:
    """The run directory's lock, taken by the main rank; every rank fails alike when another run has it."""
    lock, failure = RunDirectoryLock(run_dir), None
    if strategy.is_main:
        try:
            lock.acquire()
        except ConfigError as err:
            failure = err
    failure = strategy.broadcast_object(failure)
    if failure is not None:
        raise failure
    return lock


def _build_model_and_trainer(
    plan: RunPlan,
    strategy: Strategy,
    tokenizer: Tokenizer,
    train_loader: object,
    make_val_batches: object,
    task_evaluator: object,
    lock: RunDirectoryLock,
) -> Trainer:
    cfg, tcfg, run_dir = plan.cfg, plan.cfg.trainer, plan.run_dir
    prepare_run_dir(cfg, run_dir, strategy.is_main)
    strategy.barrier()

    # torch.optim imports torch._dynamo (and sympy, ~70 MB) with the first optimizer: imported here, it is
    # the process's memory, not the model's, in the figure below
    import torch._dynamo

    memory_before_build = current_memory_bytes(strategy.device)  # the process without its model
    on_meta = strategy.init_device == "meta"  # no weights yet: the strategy fills each rank's part below
    with torch.device(strategy.init_device):
        model = GPT(cfg.model)
    seed_everything(cfg.seed)  # the same initial weights on every rank, and on every strategy and mesh:
    if not on_meta:  # the draws of parameter_init() from the seed alone, as a meta build replays them
        model.reset_parameters()
    base_fills = model.parameter_init()
    init_state = None
    if plan.init is not None and (strategy.is_main or not on_meta):  # before the strategy shards it
        init_state = load_initial_weights(model, plan.init.weights)  # on meta: checked only
    # adapters are drawn from the seed afresh, so that they are the same whether or not the base
    # weights were drawn (a meta build with init_from skips drawing them)
    seed_everything(cfg.seed)
    apply_lora(model, cfg.model.lora)  # freezes the base weights when model.lora.rank > 0
    base_groups = full_tensor_groups(model, base_fills)  # drawn lazily, after the model is sharded
    lora_groups = full_tensor_groups(model, lora_parameter_init(model))
    flops_per_token = model.flops_per_token()
    if tcfg.precision == "fp8":  # before compile, and before a strategy wraps or shards the linears
        convert_to_fp8(model)
    layout = StepLayout(tcfg.micro_batch_size, plan.grad_accum_steps, tcfg.grad_clip, tcfg.compile)
    strategy.setup(model, cfg.optim, layout)
    if on_meta:
        seed_everything(cfg.seed)  # as before reset_parameters() above
        if plan.init is None:
            strategy.load_full_weights(base_groups)
        else:  # rank 0 alone holds the file's weights; each rank receives its part
            strategy.load_full_weights([init_state or {}], from_rank0=True)
        init_state = None
        seed_everything(cfg.seed)
        strategy.load_full_weights(lora_groups)
    build_memory = BuildMemory.since(memory_before_build, strategy.device)
    seed_everything(cfg.seed + strategy.rank)  # dropout differs across ranks, as it should
    strategy.barrier()  # every rank has read the run directory: now it may change
    if strategy.is_main:  # only now: a start refused above leaves the run directory as it was
        ckpt.save_files_atomically(run_dir, lambda tmp: ckpt.save_run_files(tmp, cfg, tokenizer))
    return Trainer(
        plan,
        strategy,
        tokenizer,
        train_loader,
        make_val_batches,
        flops_per_token,
        task_evaluator,
        lock,
        build_memory=build_memory,
    )


def dry_run(cfg: Config, run_dir: Path) -> RunSummary:
    """Check everything a start would check before training, print the plan; writes nothing anywhere."""
    plan = plan_run(cfg, run_dir)
    cfg = plan.cfg
    layout = BatchLayout(
        cfg.model.block_size,
        cfg.trainer.micro_batch_size,
        plan.grad_accum_steps,
        0,
        plan.mesh.data_parallel_size,
        cfg.seed,
    )
    # the data opens (and text is counted) with the run's tokenizer; one still to be trained is stood in
    # for by bytes, which read any text, so the paths and formats are checked all the same
    stand_in = plan.tokenizer or ByteTokenizer(cfg.tokenizer.eos_token)
    train_loader, _ = build_data(cfg.data, stand_in, layout)
    build_task_evaluator(cfg.eval, stand_in, cfg.model.block_size, cfg.data)  # task files open and parse
    with torch.device("meta"):
        flops_per_token = GPT(cfg.model).flops_per_token()
    start_step = ckpt.read_trainer_state(plan.resume_from)["step"] if plan.resume_from else 0
    precision = precision_name(resolve_precision(cfg.trainer.precision, plan.device))
    summary = describe_run(
        plan,
        precision,
        flops_per_token,
        peak_flops_per_sec(plan.device, cfg.trainer.peak_flops_per_sec),
        start_step,
        train_loader if plan.tokenizer is not None else None,
    )
    print("\n".join(summary.lines()))
    if plan.tokenizer is None:
        print(
            f"  tokenizer  a BPE of {cfg.tokenizer.vocab_size} tokens, trained on the corpus when the run "
            "starts"
        )
    if start_step >= cfg.trainer.max_steps:
        print(finished_message(run_dir, start_step, cfg.trainer.max_steps))
    print("config is valid (dry run: nothing was trained or written)")
    return summary


def train(cfg: Config, run_dir: Path | None = None, callbacks: list[Callback] | None = None) -> dict:
    """Build and fit one run; prints a sample at the end when `trainer.sample_tokens` is set."""
    trainer = build_trainer(cfg, Path(run_dir or cfg.out_dir), callbacks=callbacks)
    try:
        metrics = trainer.fit()
        if cfg.trainer.sample_tokens and metrics and not trainer.strategy.runs_whole_model:
            if trainer.strategy.is_main:
                print(
                    "gptforge: no sample printed: each pipeline stage holds some blocks only; sample the "
                    f"checkpoint with python scripts/generate.py {trainer.run_dir}",
                    flush=True,
                )
        elif cfg.trainer.sample_tokens and metrics:
            # every rank samples in step: with sharded weights (FSDP, ZeRO-3) each forward gathers them
            text = trainer.sample(cfg.trainer.sample_tokens)
            if trainer.strategy.is_main:
                print("\n--- sample ---\n" + text + "\n--------------")
        return metrics
    finally:
        trainer.close()
