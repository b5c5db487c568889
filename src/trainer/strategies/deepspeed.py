"""DeepSpeed ZeRO 1/2/3, with its config generated from ours; `deepspeed` is imported only when used."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptforge.config import Config, OptimConfig, StrategyConfig
from gptforge.errors import CheckpointError, ConfigError
from gptforge.trainer.checkpoint.layout import DEEPSPEED_DIR
from gptforge.trainer.memory import DataParallelCosts, ModelShapes
from gptforge.trainer.optim import build_optimizer, param_groups, set_lr
from gptforge.trainer.strategies.base import StepLayout
from gptforge.trainer.strategies.distributed import DistributedStrategy

CHECKPOINT_TAG = DEEPSPEED_DIR  # DeepSpeed's own files live in <checkpoint>/deepspeed/
ZERO_STAGES = (1, 2, 3)


def merge(base: dict, override: dict) -> dict:
    """`base` with `override` merged in, nested dicts key by key."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def deepspeed_config(
    zero_stage: int,
    micro_batch_size: int,
    grad_accum_steps: int,
    grad_clip: float,
    precision: str,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The DeepSpeed config for our settings, with `strategy.extra` merged over it as raw DeepSpeed keys."""
    if "scheduler" in extra:
        raise ConfigError(
            "strategy.extra.scheduler is not supported: the learning rate follows scheduler.* "
            "(set every step); remove the DeepSpeed scheduler section"
        )
    generated = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 2**31 - 1,  # our loggers report progress
        "wall_clock_breakdown": False,
    }
    return merge(generated, extra)


@contextlib.contextmanager
def _quiet_deepspeed() -> Iterator[None]:
    """Import and start DeepSpeed without its start-up chatter; warnings and errors still show."""
    # at import DeepSpeed probes compilers for every optional op (logged at INFO) and prints the ops it
    # builds; later it logs its whole config and calls collectives torch has renamed. None of it is
    # anything a user can act on.
    renamed = r"`torch\.distributed\.\w+` is deprecated"
    warnings.filterwarnings("ignore", message=renamed, category=FutureWarning)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


class DeepSpeedStrategy(DistributedStrategy):
    """A DeepSpeed engine around our model and our AdamW; ZeRO stage from `strategy.zero_stage`."""

    checkpoint_format = "deepspeed"
    fixed_world_size = "strategy=deepspeed keeps its optimizer state in one shard per rank"
    skips_steps = False  # the engine steps as soon as gradients are reduced
    recomputes_activations = False  # DeepSpeed has its own activation checkpointing API, not wired here
    takes_zero_stage = True
    steps_whole_matrices = False  # ZeRO hands the optimizer flat partitions of the weights
    autocasts = False  # the engine keeps the weights in bf16/fp16 itself

    @classmethod
    def check(cls, cfg: Config) -> None:
        if cfg.strategy.zero_stage not in ZERO_STAGES:
            raise ConfigError(
                f"strategy.zero_stage={cfg.strategy.zero_stage} is not valid; choose 1, 2 or 3 "
                "(strategy=deepspeed_zero1|deepspeed_zero2|deepspeed_zero3)"
            )
        super().check(cfg)

    @classmethod
    def describe(cls, cfg: StrategyConfig) -> str:
        return f"deepspeed ZeRO-{cfg.zero_stage}"

    @classmethod
    def model_state_shards(cls, cfg: StrategyConfig, world_size: int) -> tuple[int, int, int]:
        stage = cfg.zero_stage or 0  # ZeRO-1: optimizer state, 2: also gradients, 3: also weights
        return (world_size if stage >= 3 else 1), (world_size if stage >= 2 else 1), world_size

    @classmethod
    def data_parallel_costs(
        cls, cfg: Config, model: ModelShapes, world_size: int, compute_bytes: int, grad_accum_steps: int
    ) -> DataParallelCosts:
        return DataParallelCosts(traffic=None)  # the engine's buckets and collectives are not modelled

    @property
    def shards_parameters(self) -> bool:
        return self.cfg.zero_stage == 3

    def init_process_group(self, timeout: timedelta) -> None:
        # DeepSpeed picks its accelerator at import; name it so a CPU run on a GPU machine stays on the CPU
        os.environ.setdefault("DS_ACCELERATOR", self.device.type)
        super().init_process_group(timeout)  # torch's group, on this attempt's store; DeepSpeed adopts it
        with _quiet_deepspeed():
            import deepspeed

            deepspeed.init_distributed(dist_backend=self.backend, timeout=timeout)

    def setup(self, model: nn.Module, optim_cfg: OptimConfig, layout: StepLayout) -> None:
        import deepspeed

        self.layout = layout
        config = deepspeed_config(
            self.cfg.zero_stage,
            layout.micro_batch_size,
            layout.grad_accum_steps,
            layout.grad_clip,
            self.precision_name,
            self.cfg.extra,
        )
        model.to(self.device)
        if "optimizer" in config:
            # DeepSpeed builds the optimizer named in strategy.extra over our param groups
            optimizer = None
            parameters = param_groups(model, optim_cfg.weight_decay)
        else:
            optimizer, parameters = build_optimizer(model, optim_cfg, self.device), None
        with _quiet_deepspeed():
            engine, self.optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=optimizer, model_parameters=parameters, config=config
            )
        if layout.compile:
            engine.compile()
        self.engine = engine
        self.model = engine

    @property
    def unwrapped_model(self) -> nn.Module:
        return self.engine.module

    def forward_backward(
        self, input_ids: torch.Tensor, targets: torch.Tensor, loss_scale: float, sync_grads: bool
    ) -> torch.Tensor:
        # the engine reduces gradients only at the boundary we name; the loop already scales the loss
        self.engine.set_gradient_accumulation_boundary(sync_grads)
        with self.collective("gradient reduction of the DeepSpeed engine (forward/backward)"):
            _, loss = self.engine(input_ids, targets)
            self.engine.backward(loss * loss_scale, scale_wrt_gas=False)
        return loss.detach()

    def clip_and_step(self, lr: float, skip: bool = False) -> tuple[torch.Tensor, bool]:
        # the engine clips to the layout's grad_clip (in its config) before stepping, and skips the step
        # itself, on every rank, when any rank's gradients hold an inf or NaN (skip=True never arrives:
        # `check` refuses spike_policy=skip)
        set_lr(self.optimizer, lr)
        skipped_before = self.engine.skipped_steps
        with self.collective("optimizer step of the DeepSpeed engine (norm all_reduce, weight gather)"):
            self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()
        stepped = self.engine.skipped_steps == skipped_before
        norm = float(grad_norm) if grad_norm is not None and stepped else float("nan")
        return torch.as_tensor(norm), stepped

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag=CHECKPOINT_TAG, save_latest=False)

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(directory), tag=CHECKPOINT_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise CheckpointError(f"{directory} has no DeepSpeed checkpoint ({CHECKPOINT_TAG}/)")

    def full_model_state_dict(self) -> dict[str, torch.Tensor]:
        import deepspeed

        module = self.engine.module
        params = list(module.parameters()) if self.cfg.zero_stage == 3 else []
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=bool(params)):
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    @classmethod
    def consolidate(cls, directory: Path) -> dict[str, torch.Tensor]:
        if not (directory / CHECKPOINT_TAG).is_dir():
            raise CheckpointError(f"{directory} has no {CHECKPOINT_TAG}/; strategy=deepspeed did not save it")
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        with _quiet_deepspeed():
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            # the fp32 master weights, reassembled from every rank's optimizer partition
            return get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=CHECKPOINT_TAG)
