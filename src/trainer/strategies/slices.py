"""Data parallelism across a CPU's cores inside one process (`trainer.cpu_batch_threads`).

Each thread runs forward and backward of its share of a micro-batch's sequences with one torch thread,
and the slices' gradients are summed in a fixed order, so runs repeat bit for bit. A small model gains
more from this than from splitting every operator across cores (OpenMP), whose per-operator hand-offs cost
more than small operators take, and which stall whenever another process holds a core.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch import nn

from gptforge.errors import ConfigError
from gptforge.models.gpt import IGNORE_INDEX

SliceResult = TypeVar("SliceResult")


class CPUSlices:
    """Runs each micro-batch as `slices` slices along B, one per thread, for one model."""

    def __init__(self, model: nn.Module, slices: int, threads_per_slice: int, compile: bool) -> None:
        name = f"trainer.cpu_batch_threads={slices}"
        if compile:
            raise ConfigError(
                f"{name} does not combine with trainer.compile=true; set one of them to its default"
            )
        dropout = max((m.p for m in model.modules() if isinstance(m, nn.Dropout)), default=0.0)
        if dropout:
            # threads would draw dropout masks from the one generator in a race: runs would not repeat
            raise ConfigError(f"{name} needs a model without dropout (found p={dropout}); set it to 1")
        self.model, self.slices, self.threads_per_slice = model, slices, threads_per_slice
        torch.set_num_threads(threads_per_slice)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.pool = ThreadPoolExecutor(slices - 1, thread_name_prefix="gptforge-slice")

    def forward_backward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        loss_scale: float,
        autocast: Callable[[], object],
    ) -> torch.Tensor | None:
        """The micro-batch's loss, its gradients added into `param.grad`; None: run it whole instead."""
        sliced = self._in_slices(lambda x, y: self._loss_and_grads(x, y, autocast), input_ids, targets)
        if sliced is None:
            return None
        results, shares = sliced
        # the whole micro-batch's gradient is the share-weighted sum of the slices', in slice order
        grads = list(results[0][1])
        torch._foreach_mul_(grads, shares[0] * loss_scale)
        for (_, slice_grads), share in zip(results[1:], shares[1:], strict=True):
            torch._foreach_add_(grads, slice_grads, alpha=share * loss_scale)
        for param, grad in zip(self.trainable, grads, strict=True):
            if param.grad is None:
                param.grad = grad
            else:
                param.grad += grad
        return sum(share * loss for (loss, _), share in zip(results, shares, strict=True))

    def eval_loss(
        self, input_ids: torch.Tensor, targets: torch.Tensor, autocast: Callable[[], object]
    ) -> torch.Tensor | None:
        """The micro-batch's loss without gradients; None: run it whole instead."""
        sliced = self._in_slices(lambda x, y: self._eval_loss(x, y, autocast), input_ids, targets)
        if sliced is None:
            return None
        losses, shares = sliced
        return sum(share * loss for loss, share in zip(losses, shares, strict=True))

    def _in_slices(
        self,
        run: Callable[[torch.Tensor, torch.Tensor], SliceResult],
        input_ids: torch.Tensor,
        targets: torch.Tensor,
    ) -> tuple[list[SliceResult], list[float]] | None:
        """`run` on slices of the batch along B, one per thread, and each slice's share of the loss.

        The loss is a mean over the targets that count (not IGNORE_INDEX), so a slice's share is its part
        of them. None (run it whole) when a slice would have no target that counts.
        """
        if input_ids.size(0) < 2:
            return None
        inputs, labels = input_ids.tensor_split(self.slices), targets.tensor_split(self.slices)
        counts = [int((y != IGNORE_INDEX).sum()) for y in labels if y.numel()]
        if len(counts) < 2 or 0 in counts:
            return None
        pairs = list(zip(inputs[: len(counts)], labels[: len(counts)], strict=True))
        futures = [self.pool.submit(run, x, y) for x, y in pairs[1:]]
        results = [run(*pairs[0]), *(future.result() for future in futures)]  # this thread takes slice 0
        total = sum(counts)
        return results, [count / total for count in counts]

    def _loss_and_grads(
        self, input_ids: torch.Tensor, targets: torch.Tensor, autocast: Callable[[], object]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        torch.set_num_threads(self.threads_per_slice)  # OpenMP's thread count is per calling thread
        with autocast():
            _, loss = self.model(input_ids, targets)
        grads = torch.autograd.grad(loss, self.trainable, materialize_grads=True)
        return loss.detach(), grads

    def _eval_loss(
        self, input_ids: torch.Tensor, targets: torch.Tensor, autocast: Callable[[], object]
    ) -> torch.Tensor:
        torch.set_num_threads(self.threads_per_slice)
        with torch.no_grad(), autocast():  # grad mode and autocast are per thread
            _, loss = self.model(input_ids, targets)
        return loss

    def close(self) -> None:
        self.pool.shutdown()
