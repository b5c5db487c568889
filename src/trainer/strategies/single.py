"""One process, one device: the baseline every other strategy must match."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gptforge.config import OptimConfig
from gptforge.trainer.optim import build_optimizer
from gptforge.trainer.strategies.base import Strategy, apply_activation_checkpointing, clip_and_step_local

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"


class SingleDeviceStrategy(Strategy):
    """Plain PyTorch on one CPU or GPU."""

    def setup(self, model: nn.Module, optim_cfg: OptimConfig, compile: bool = False) -> None:
        self.model = model.to(self.device)
        if self.cfg.activation_checkpointing:
            apply_activation_checkpointing(self.model)
        # checkpoints hold the uncompiled module's keys, so compiled and eager runs share checkpoints
        self.train_model = torch.compile(self.model) if compile else self.model
        self.optimizer = build_optimizer(self.model, optim_cfg, self.device)

    def forward_backward(
        self, input_ids: torch.Tensor, targets: torch.Tensor, loss_scale: float, sync_grads: bool
    ) -> torch.Tensor:
        with self.autocast():
            _, loss = self.train_model(input_ids, targets)
        (loss * loss_scale).backward()
        return loss.detach()

    def clip_and_step(self, max_norm: float, lr: float, skip: bool = False) -> tuple[torch.Tensor, bool]:
        return clip_and_step_local(self.model, self.optimizer, max_norm, lr, skip)

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
