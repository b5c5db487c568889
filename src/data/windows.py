"""Window batches over token arrays, identical for any world size and resumable by one integer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from gptforge.errors import DataError


class RandomWindowLoader:
    """Yields this rank's (input_ids, targets) micro-batches of windows of T+1 tokens.

    The global batch of optimizer step `s` is drawn from `(seed, s)` alone and split rank-major, so
    1 rank x 2B, 2 ranks x B and 1 rank x B with 2 accumulation steps all train on the same tokens,
    and the loader's whole state is the step it has reached. `tokens` may be several arrays (memmap
    shards): windows never cross from one to the next. `sequential` walks the windows in order (stride
    T, so every token is a target once per epoch) instead of drawing them at random.
    """

    def __init__(
        self,
        tokens: np.ndarray | Sequence[np.ndarray],
        block_size: int,
        micro_batch_size: int,
        grad_accum_steps: int = 1,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        sequential: bool = False,
        pin_memory: bool = False,
    ) -> None:
        arrays = [tokens] if isinstance(tokens, np.ndarray) else list(tokens)
        arrays = [a for a in arrays if len(a) >= block_size + 2]
        if not arrays:
            longest = max(
                (len(a) for a in ([tokens] if isinstance(tokens, np.ndarray) else tokens)), default=0
            )
            raise DataError(
                f"the data has {longest} tokens, too few for one window of model.block_size={block_size} "
                f"(it needs {block_size + 2}); lower model.block_size or give more text"
            )
        self.arrays = arrays
        self.block_size = block_size
        self.micro_batch_size = micro_batch_size
        self.grad_accum_steps = grad_accum_steps
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.sequential = sequential
        self.pin_memory = pin_memory
        self.step = 0
        self._micro_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        if sequential:
            counts = [(len(a) - 1) // block_size for a in arrays]
        else:
            counts = [len(a) - block_size - 1 for a in arrays]
        self._first = np.cumsum([0, *counts])  # global index of each array's first window
        self.n_windows = int(self._first[-1])

    @property
    def tokens(self) -> np.ndarray:
        return self.arrays[0]

    @property
    def corpus_tokens(self) -> int:
        """Tokens in the training arrays: one epoch."""
        return sum(len(a) for a in self.arrays)

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps * self.world_size

    def _window_indices(self, step: int) -> np.ndarray:
        if self.sequential:
            return (step * self.global_batch_size + np.arange(self.global_batch_size)) % self.n_windows
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, self.n_windows, size=self.global_batch_size)

    def _draw_step(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        per_rank = self.micro_batch_size * self.grad_accum_steps
        mine = self._window_indices(step)[self.rank * per_rank : (self.rank + 1) * per_rank]
        array_of = np.searchsorted(self._first, mine, side="right") - 1
        local = mine - self._first[array_of]
        if self.sequential:
            local = local * self.block_size
        span = self.block_size + 1
        windows = np.stack([self.arrays[a][s : s + span] for a, s in zip(array_of, local, strict=True)])
        windows = torch.from_numpy(windows.astype(np.int64))
        # (accum, B, T+1) -> accum micro-batches of (B, T) inputs and targets
        windows = windows.view(self.grad_accum_steps, self.micro_batch_size, span)
        inputs, targets = windows[..., :-1].contiguous(), windows[..., 1:].contiguous()
        if self.pin_memory:  # once per step, not per micro-batch: the copies to the GPU do not block
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
        return list(zip(inputs, targets, strict=True))

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
