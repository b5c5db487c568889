"""Packing: documents joined by EOS and cut into fixed blocks of T+1 tokens, nothing padded or dropped."""

from __future__ import annotations

import numpy as np


class Packer:
    """Joins documents, each followed by EOS, into (n, block_len) blocks; the remainder carries over."""

    def __init__(self, block_len: int, eos_id: int, carry: list[int] | None = None) -> None:
        self.block_len = block_len
        self.eos_id = eos_id
        self.carry = list(carry or [])

    def add(self, documents: list[list[int]]) -> np.ndarray:
        """The complete blocks that `documents` (token ids) finish, shape (n, block_len), int32."""
        tokens = self.carry
        for ids in documents:
            tokens.extend(ids)
            tokens.append(self.eos_id)
        n_blocks = len(tokens) // self.block_len
        cut = n_blocks * self.block_len
        blocks = np.array(tokens[:cut], dtype=np.int32).reshape(n_blocks, self.block_len)
        self.carry = tokens[cut:]
        return blocks
