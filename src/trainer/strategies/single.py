"""One process, one device: the baseline every other strategy must match."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gptforge.config import OptimConfig, StrategyConfig, TrainerConfig
from gptforge.trainer.checkpoint.layout import MODEL_FILE, OPTIMIZER_FILE
from gptforge.trainer.optim import build_optimizer
from gptforge.trainer.strategies.base import (
    StepLayout,
    Strategy,
    apply_activation_checkpointing,
    clip_and_step_local,
)
from gptforge.trainer.strategies.slices import CPUSlices


class SingleDeviceStrategy(Strategy):
    """Plain PyTorch on one CPU or GPU; on a CPU, optionally each micro-batch in slices on several threads
    (`trainer.cpu_batch_threads`, see strategies/slices.py)."""

    def __init__(
        self,
        cfg: StrategyConfig,
        device: str = "auto",
        precision: str = "auto",
        cpu_batch_threads: int = 1,
        threads: int | None = None,
    ) -> None:
        super().__init__(cfg, device=device, precision=precision)
        # a GPU runs the whole micro-batch in one launch: slices would only shrink its matmuls
        self.n_slices = cpu_batch_threads if self.device.type == "cpu" else 1
        self.threads_per_slice = threads or 1  # the slices already keep the cores busy
        self.slices: CPUSlices | None = None

    @classmethod
    def from_config(cls, cfg: StrategyConfig, trainer_cfg: TrainerConfig) -> SingleDeviceStrategy:
        return cls(
            cfg,
            device=trainer_cfg.device,
            precision=trainer_cfg.precision,
            cpu_batch_threads=trainer_cfg.cpu_batch_threads,
            threads=trainer_cfg.threads,
        )

    def setup(self, model: nn.Module, optim_cfg: OptimConfig, layout: StepLayout) -> None:
        self.layout = layout
        self.model = model.to(self.device)
        if self.n_slices > 1:
            self.slices = CPUSlices(self.model, self.n_slices, self.threads_per_slice, layout.compile)
        if self.cfg.activation_checkpointing:
            apply_activation_checkpointing(self.model)
        # checkpoints hold the uncompiled module's keys, so compiled and eager runs share checkpoints
        self.train_model = torch.compile(self.model) if layout.compile else self.model
        self.optimizer = build_optimizer(self.model, optim_cfg, self.device)

    def forward_backward(
        self, input_ids: torch.Tensor, targets: torch.Tensor, loss_scale: float, sync_grads: bool
    ) -> torch.Tensor:
        if self.slices is not None:
            loss = self.slices.forward_backward(input_ids, targets, loss_scale, self.autocast)
            if loss is not None:
                return loss
        with self.autocast():
            _, loss = self.train_model(input_ids, targets)
        (loss * loss_scale).backward()
        return loss.detach()

    @torch.no_grad()
    def eval_loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.slices is not None:
            loss = self.slices.eval_loss(input_ids, targets, self.autocast)
            if loss is not None:
                return loss
        return super().eval_loss(input_ids, targets)

    def clip_and_step(self, lr: float, skip: bool = False) -> tuple[torch.Tensor, bool]:
        return clip_and_step_local(self.model, self.optimizer, self.layout.grad_clip, lr, skip)

    def save(self, directory: Path) -> None:
        torch.save(self.model.state_dict(), directory / MODEL_FILE)
        torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_FILE)

    def load(self, directory: Path) -> None:
        # onto the CPU first: loading straight to the device would hold two copies there at once
        self.model.load_state_dict(torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True))
        optim_state = torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(optim_state)

    def full_model_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    @classmethod
    def consolidate(cls, directory: Path) -> dict[str, torch.Tensor]:
        return torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True)

    def teardown(self) -> None:
        if self.slices is not None:
            self.slices.close()
            self.slices = None
