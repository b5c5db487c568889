"""What scoring needs of a model and the processes that hold it: a training `Strategy` is one such host,
`LocalHost` the one for a checkpoint loaded in a single process."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from gptforge.trainer.devices import autocast_context, resolve_precision


class EvalHost(Protocol):
    """A model to score with, on this rank: `model` is the forward to call (a strategy's wrapped model, so
    sharded weights are gathered), `unwrapped_model` the GPT itself (its config and KV cache)."""

    model: nn.Module
    device: torch.device
    rank: int
    world_size: int
    shards_parameters: bool  # True: every rank must make the same forward calls (FSDP, ZeRO-3)

    @property
    def unwrapped_model(self) -> nn.Module: ...

    def autocast(self) -> contextlib.AbstractContextManager: ...

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor: ...

    def broadcast_flag(self, flag: bool) -> bool: ...


@dataclass
class LocalHost:
    """One process, one model: a checkpoint scored by `scripts/evaluate.py` or the lm-eval adapter."""

    model: nn.Module
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    rank: int = 0
    world_size: int = 1
    shards_parameters: bool = False

    @classmethod
    def auto(cls, model: nn.Module, device: torch.device) -> LocalHost:
        """bf16 autocast on CUDA devices that support it, fp32 elsewhere (trainer.precision=auto)."""
        return cls(model, device, resolve_precision("auto", device))

    @property
    def unwrapped_model(self) -> nn.Module:
        return self.model

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.autocast_dtype)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def broadcast_flag(self, flag: bool) -> bool:
        return flag
