"""Random-window batches over a token array, identical for any world size and resumable by one integer."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class RandomWindowLoader:
    """Yields this rank's (input_ids, targets) micro-batches of random windows.

    The global batch of optimizer step `s` is drawn from `(seed, s)` alone and split rank-major, so
    1 rank x 2B, 2 ranks x B and 1 rank x B with 2 accumulation steps all train on the same tokens,
    and the loader's whole state is the step it has reached.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        micro_batch_size: int,
        grad_accum_steps: int = 1,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        if len(tokens) < block_size + 2:
            raise ValueError(f"{len(tokens)} tokens are too few for windows of block_size={block_size}")
        self.tokens = tokens
        self.block_size = block_size
        self.micro_batch_size = micro_batch_size
        self.grad_accum_steps = grad_accum_steps
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.step = 0
        self._micro_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._offsets = np.arange(block_size + 1)

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps * self.world_size

    def _draw_step(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.block_size - 1, size=self.global_batch_size)
        per_rank = self.micro_batch_size * self.grad_accum_steps
        mine = starts[self.rank * per_rank : (self.rank + 1) * per_rank]
        windows = torch.from_numpy(self.tokens[mine[:, None] + self._offsets].astype(np.int64))
        # (accum, B, T+1) -> accum micro-batches of (B, T) inputs and targets
        windows = windows.view(self.grad_accum_steps, self.micro_batch_size, self.block_size + 1)
        return [(w[:, :-1], w[:, 1:]) for w in windows]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._micro_batches:
            self._micro_batches = self._draw_step(self.step)
            self.step += 1
        return self._micro_batches.pop(0)

    def state_dict(self) -> dict:
        if self._micro_batches:
            raise RuntimeError("loader state is only defined between optimizer steps")
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self._micro_batches = []
