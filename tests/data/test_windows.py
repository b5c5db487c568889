"""Random-window batches: targets shifted by one, world-size invariant, resumable by its state."""

from __future__ import annotations

import numpy as np
import torch

from gptforge.data import RandomWindowLoader

TOKENS = np.arange(1000, dtype=np.uint16)


def take(loader: RandomWindowLoader, n: int) -> list[torch.Tensor]:
    return [torch.cat(next(loader), dim=1) for _ in range(n)]


def test_targets_are_inputs_shifted_by_one() -> None:
    x, y = next(RandomWindowLoader(TOKENS, block_size=16, micro_batch_size=4))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y - x, torch.ones_like(x))  # TOKENS are consecutive ids


def test_global_batch_is_the_same_for_any_world_size_and_accumulation() -> None:
    single = next(RandomWindowLoader(TOKENS, 8, micro_batch_size=4, seed=3))[0]
    accum = RandomWindowLoader(TOKENS, 8, micro_batch_size=2, grad_accum_steps=2, seed=3)
    ranks = [
        RandomWindowLoader(TOKENS, 8, micro_batch_size=2, rank=r, world_size=2, seed=3) for r in range(2)
    ]
    assert torch.equal(torch.cat([next(accum)[0] for _ in range(2)]), single)
    assert torch.equal(torch.cat([next(loader)[0] for loader in ranks]), single)


def test_resume_from_state_sees_the_same_batches() -> None:
    uninterrupted = RandomWindowLoader(TOKENS, 8, micro_batch_size=3, grad_accum_steps=2, seed=7)
    expected = take(uninterrupted, 10)
    first = RandomWindowLoader(TOKENS, 8, micro_batch_size=3, grad_accum_steps=2, seed=7)
    seen = take(first, 4)
    resumed = RandomWindowLoader(TOKENS, 8, micro_batch_size=3, grad_accum_steps=2, seed=7)
    resumed.load_state_dict(first.state_dict())
    seen += take(resumed, 6)
    assert all(torch.equal(a, b) for a, b in zip(seen, expected, strict=True))


def test_different_seeds_give_different_batches() -> None:
    a = next(RandomWindowLoader(TOKENS, 8, micro_batch_size=4, seed=1))[0]
    b = next(RandomWindowLoader(TOKENS, 8, micro_batch_size=4, seed=2))[0]
    assert not torch.equal(a, b)
