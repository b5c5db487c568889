"""One process, one device: the baseline every other strategy must match."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from gptforge.config import OptimConfig, StrategyConfig, TrainerConfig
from gptforge.errors import ConfigError
from gptforge.models.gpt import IGNORE_INDEX
from gptforge.trainer.optim import build_optimizer
from gptforge.trainer.strategies.base import Strategy, apply_activation_checkpointing, clip_and_step_local

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
SliceResult = TypeVar("SliceResult")


class SingleDeviceStrategy(Strategy):
    """Plain PyTorch on one CPU or GPU; on a CPU, optionally each micro-batch in slices on several threads.

    Slices (`trainer.cpu_batch_threads`) are data parallelism across a CPU's cores inside one process:
    each thread runs forward and backward of its share of the sequences with one torch thread, and their
    gradients are summed in a fixed order. A small model gains more from this than from splitting every
    operator across cores (OpenMP), whose per-operator hand-offs cost more than small operators take, and
    which stall whenever another process holds a core.
    """

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
        self.slices = cpu_batch_threads if self.device.type == "cpu" else 1
        self.threads_per_slice = threads or 1  # the slices already keep the cores busy
        self._pool: ThreadPoolExecutor | None = None
        self._trainable: list[nn.Parameter] = []

    @classmethod
    def from_config(cls, cfg: StrategyConfig, trainer_cfg: TrainerConfig) -> SingleDeviceStrategy:
        return cls(
            cfg,
            device=trainer_cfg.device,
            precision=trainer_cfg.precision,
            cpu_batch_threads=trainer_cfg.cpu_batch_threads,
            threads=trainer_cfg.threads,
        )

    def setup(self, model: nn.Module, optim_cfg: OptimConfig, compile: bool = False) -> None:
        self.model = model.to(self.device)
        if self.slices > 1:
            self._setup_slices(compile)
        if self.cfg.activation_checkpointing:
            apply_activation_checkpointing(self.model)
        # checkpoints hold the uncompiled module's keys, so compiled and eager runs share checkpoints
        self.train_model = torch.compile(self.model) if compile else self.model
        self.optimizer = build_optimizer(self.model, optim_cfg, self.device)

    def _setup_slices(self, compile: bool) -> None:
        name = f"trainer.cpu_batch_threads={self.slices}"
        if compile:
            raise ConfigError(
                f"{name} does not combine with trainer.compile=true; set one of them to its default"
            )
        dropout = max((m.p for m in self.model.modules() if isinstance(m, nn.Dropout)), default=0.0)
        if dropout:
            # threads would draw dropout masks from the one generator in a race: runs would not repeat
            raise ConfigError(f"{name} needs a model without dropout (found p={dropout}); set it to 1")
        torch.set_num_threads(self.threads_per_slice)
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._pool = ThreadPoolExecutor(self.slices - 1, thread_name_prefix="gptforge-slice")

    def forward_backward(
        self, input_ids: torch.Tensor, targets: torch.Tensor, loss_scale: float, sync_grads: bool
    ) -> torch.Tensor:
        sliced = self._in_slices(self._slice_loss_and_grads, input_ids, targets)
        if sliced is None:
            with self.autocast():
                _, loss = self.train_model(input_ids, targets)
            (loss * loss_scale).backward()
            return loss.detach()
        results, shares = sliced
        # the whole micro-batch's gradient is the share-weighted sum of the slices', in slice order
        grads = list(results[0][1])
        torch._foreach_mul_(grads, shares[0] * loss_scale)
        for (_, slice_grads), share in zip(results[1:], shares[1:], strict=True):
            torch._foreach_add_(grads, slice_grads, alpha=share * loss_scale)
        for param, grad in zip(self._trainable, grads, strict=True):
            if param.grad is None:
                param.grad = grad
            else:
                param.grad += grad
        return sum(share * loss for (loss, _), share in zip(results, shares, strict=True))

    @torch.no_grad()
    def eval_loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        sliced = self._in_slices(self._slice_eval_loss, input_ids, targets)
        if sliced is None:
            return super().eval_loss(input_ids, targets)
        losses, shares = sliced
        return sum(share * loss for loss, share in zip(losses, shares, strict=True))

    def _in_slices(
        self,
        run: Callable[[torch.Tensor, torch.Tensor], SliceResult],
        input_ids: torch.Tensor,
        targets: torch.Tensor,
    ) -> tuple[list[SliceResult], list[float]] | None:
        """`run` on slices of the batch along B, one per thread, and each slice's share of the loss.

        The loss is a mean over the targets that count (not -100), so a slice's share is its part of
        them. None (run it whole) when slicing is off or a slice would have no target that counts.
        """
        if self._pool is None or input_ids.size(0) < 2:
            return None
        inputs, labels = input_ids.tensor_split(self.slices), targets.tensor_split(self.slices)
        counts = [int((y != IGNORE_INDEX).sum()) for y in labels if y.numel()]
        if len(counts) < 2 or 0 in counts:
            return None
        pairs = list(zip(inputs[: len(counts)], labels[: len(counts)], strict=True))
        futures = [self._pool.submit(run, x, y) for x, y in pairs[1:]]
        results = [run(*pairs[0]), *(future.result() for future in futures)]  # this thread takes slice 0
        total = sum(counts)
        return results, [count / total for count in counts]

    def _slice_loss_and_grads(
        self, input_ids: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        torch.set_num_threads(self.threads_per_slice)  # OpenMP's thread count is per calling thread
        with self.autocast():
            _, loss = self.train_model(input_ids, targets)
        grads = torch.autograd.grad(loss, self._trainable, materialize_grads=True)
        return loss.detach(), grads

    def _slice_eval_loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        torch.set_num_threads(self.threads_per_slice)
        with torch.no_grad(), self.autocast():  # grad mode and autocast are per thread
            _, loss = self.model(input_ids, targets)
        return loss

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

    def teardown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
