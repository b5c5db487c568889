"""DistributedDataParallel: the whole model on every rank, gradients all-reduced once per optimizer step."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gptforge.config import Config, OptimConfig
from gptforge.trainer.checkpoint.layout import MODEL_FILE, OPTIMIZER_FILE
from gptforge.trainer.memory import FP32, DataParallelCosts, ModelShapes
from gptforge.trainer.optim import build_optimizer
from gptforge.trainer.strategies.base import StepLayout, apply_activation_checkpointing, clip_and_step_local
from gptforge.trainer.strategies.distributed import DistributedStrategy
from gptforge.trainer.strategies.single import SingleDeviceStrategy


class DDPStrategy(DistributedStrategy):
    """Data parallel with replicated weights; checkpoints are rank 0's, in the `single` strategy's format."""

    @classmethod
    def data_parallel_costs(
        cls, cfg: Config, model: ModelShapes, world_size: int, compute_bytes: int, grad_accum_steps: int
    ) -> DataParallelCosts:
        # the reducer's buckets (bucket_cap_mb each) hold a second copy of every gradient, in the weights'
        # dtype (fp32), unless the gradients are views into them (extra: {gradient_as_bucket_view: true})
        gradient_bytes = model.trainable * FP32
        buckets = 0.0 if cfg.strategy.extra.get("gradient_as_bucket_view") else gradient_bytes
        all_reduce = 2 * gradient_bytes * (world_size - 1) / world_size  # a ring sends each byte ~twice
        return DataParallelCosts(buckets, traffic=(("gradient all-reduce", all_reduce),))

    def setup(self, model: nn.Module, optim_cfg: OptimConfig, layout: StepLayout) -> None:
        self.layout = layout
        self.model = model.to(self.device)
        if self.cfg.activation_checkpointing:
            apply_activation_checkpointing(self.model)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids, **self.cfg.extra)
        self.train_model = torch.compile(self.ddp_model) if layout.compile else self.ddp_model
        self.optimizer = build_optimizer(self.model, optim_cfg, self.device)

    def teardown(self) -> None:
        # Free DDP's reducer while the process group is still registered: if the reducer held the last
        # reference, the group's destructor would join gloo's threads with the GIL held, and a thread
        # freeing a finished all-reduce needs the GIL (a deadlock seen at exit, torch issue #56297).
        self.ddp_model = self.train_model = None
        super().teardown()

    def forward_backward(
        self, input_ids: torch.Tensor, targets: torch.Tensor, loss_scale: float, sync_grads: bool
    ) -> torch.Tensor:
        # gradients accumulate locally until the last micro-batch, whose backward all-reduces them once
        sync = contextlib.nullcontext() if sync_grads else self.ddp_model.no_sync()
        with self.collective("all_reduce of the gradients (DDP backward)"), sync:
            with self.autocast():
                _, loss = self.train_model(input_ids, targets)
            (loss * loss_scale).backward()
        return loss.detach()

    def clip_and_step(self, lr: float, skip: bool = False) -> tuple[torch.Tensor, bool]:
        # gradients are identical on every rank after the all-reduce, so the local norm is the global one
        return clip_and_step_local(self.model, self.optimizer, self.layout.grad_clip, lr, skip)

    def save(self, directory: Path) -> None:
        if self.is_main:
            torch.save(self.model.state_dict(), directory / MODEL_FILE)
            torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_FILE)

    def load(self, directory: Path) -> None:
        state = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.optimizer.load_state_dict(
            torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        )

    def full_model_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    @classmethod
    def consolidate(cls, directory: Path) -> dict[str, torch.Tensor]:
        return SingleDeviceStrategy.consolidate(directory)
