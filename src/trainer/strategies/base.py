"""The one interface the training loop uses to run a step, whatever the backend."""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from gptforge.config import OptimConfig, StrategyConfig, TrainerConfig
from gptforge.errors import ConfigError, LaunchError


def local_world_size() -> int:
    """Processes on this node: torchrun sets LOCAL_WORLD_SIZE, the DeepSpeed launcher LOCAL_SIZE."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)


def resolve_device(name: str, local_rank: int = 0, procs_per_node: int = 1) -> torch.device:
    """`auto` is CUDA when present, else CPU; a CUDA run uses the device of this process's local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible == 0:
            if procs_per_node == 1:
                raise ConfigError(
                    "trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu"
                )
            raise LaunchError(
                f"NPROC={procs_per_node} processes per node with trainer.device=cuda, but no CUDA device "
                "is visible; use trainer.device=auto or cpu (gloo) on this machine"
            )
        if procs_per_node > visible:
            raise LaunchError(
                f"NPROC={procs_per_node} processes per node but {visible} CUDA device(s) visible; "
                f"set NPROC<={visible} (one process per GPU) or trainer.device=cpu"
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Wrap every transformer block so its activations are recomputed in backward instead of stored."""
    # torchtitan's choice; the wrapper strips its own prefix from state-dict keys, so checkpoints match
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(model.blocks):
        model.blocks[i] = checkpoint_wrapper(block)


def clip_and_step_local(
    model: nn.Module, optimizer: torch.optim.Optimizer, max_norm: float, lr: float, skip: bool
) -> tuple[torch.Tensor, bool]:
    """`Strategy.clip_and_step` for backends whose gradients sit in `param.grad` (single, DDP, FSDP)."""
    from gptforge.trainer.optim import set_lr

    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm or float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor holding the global norm
        grad_norm = grad_norm.full_tensor()
    # one host sync per step: the price of never applying a NaN update (DeepSpeed pays the same)
    stepped = not skip and bool(torch.isfinite(grad_norm))
    if stepped:
        set_lr(optimizer, lr)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.detach(), stepped


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32. `auto` is bf16 on CUDA devices that support it."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[name]


def precision_name(dtype: torch.dtype | None) -> str:
    """How the summary and metrics name an autocast dtype (None: fp32)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device` (from `resolve_precision`); None runs in full fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class Strategy(ABC):
    """Sets up model and optimizer for one backend, runs forward/backward/step, saves and loads state."""

    shards_parameters = False  # True: no rank holds the whole model, so rank 0 cannot use it alone

    def __init__(self, cfg: StrategyConfig, device: str = "auto", precision: str = "auto") -> None:
        self.cfg = cfg
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.device = resolve_device(device, self.local_rank, local_world_size())
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def from_config(cls, cfg: StrategyConfig, trainer_cfg: TrainerConfig) -> Strategy:
        """The strategy for these configs; backends that need more of the trainer config override this."""
        return cls(cfg, device=trainer_cfg.device, precision=trainer_cfg.precision)

    @classmethod
    @abstractmethod
    def consolidate(cls, directory: Path) -> dict[str, torch.Tensor]:
        """The whole model's weights from a checkpoint directory this backend saved, read in one process."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def precision_name(self) -> str:
        return precision_name(self.autocast_dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.autocast_dtype)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    @abstractmethod
    def setup(self, model: nn.Module, optim_cfg: OptimConfig, compile: bool = False) -> None:
        """Move/wrap the model for this backend (compiled if asked) and build its optimizer."""

    @abstractmethod
    def forward_backward(
        self, input_ids: torch.Tensor, targets: torch.Tensor, loss_scale: float, sync_grads: bool
    ) -> torch.Tensor:
        """One micro-batch: forward, backward of `loss * loss_scale`; returns the unscaled loss, detached.

        `sync_grads` is False on all but the last micro-batch of a step, so backends skip the all-reduce.
        """

    @abstractmethod
    def clip_and_step(self, max_norm: float, lr: float, skip: bool = False) -> tuple[torch.Tensor, bool]:
        """Clip the global gradient norm (0: no clipping), step the optimizer at `lr`, zero grads.

        The step is skipped (weights and optimizer state unchanged) when `skip` is set or the norm is
        not finite on any rank. Returns the global norm before clipping and whether the step was taken.
        """

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write model and optimizer state into `directory` in the backend's own format (all ranks call)."""

    @abstractmethod
    def load(self, directory: Path) -> None:
        """Restore model and optimizer state written by `save` (all ranks call)."""

    @abstractmethod
    def full_model_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights as plain CPU tensors (on rank 0; may be empty elsewhere)."""

    @torch.no_grad()
    def eval_loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of one batch without gradients, through the wrapped model (all ranks call)."""
        with self.autocast():
            _, loss = self.model(input_ids, targets)
        return loss.detach()

    @property
    def unwrapped_model(self) -> nn.Module:
        """The model as built, without backend wrappers (for evaluation and sampling)."""
        return self.model

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all ranks, on every rank (counts and totals of an evaluation)."""
        return tensor

    def barrier(self) -> None:
        return None

    def broadcast_flag(self, flag: bool) -> bool:
        """True on every rank if `flag` is True on any rank."""
        return flag

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's `obj` (any picklable object) on every rank."""
        return obj

    def teardown(self) -> None:
        return None
