"""Packing: documents joined by EOS and cut into fixed blocks of T+1 tokens, nothing padded or dropped;
prompt/response examples the same way, each token with a loss flag."""

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


class ExamplePacker:
    """Packs prompt/response examples like `Packer`, each token with a loss flag: blocks (n, 2, block_len).

    Row 0 of a block holds token ids, row 1 whether the token is learned (1: response or its closing EOS,
    0: prompt). A block whose targets (tokens 1..T) are all prompt is dropped: it would teach nothing, and a
    micro-batch of such blocks would average the loss over zero tokens.
    """

    def __init__(self, block_len: int, eos_id: int, carry: list[list[int]] | None = None) -> None:
        self.block_len = block_len
        self.eos_id = eos_id
        ids, learned = carry or ([], [])
        self._ids, self._learned = list(ids), list(learned)

    @property
    def carry(self) -> list[list[int]]:
        """The tokens after the last complete block and their loss flags: [ids, flags], a fresh copy."""
        return [list(self._ids), list(self._learned)]

    def add(self, examples: list[tuple[list[int], list[int]]]) -> np.ndarray:
        """The blocks that (prompt ids, response ids) examples complete, shape (n, 2, block_len), int32."""
        ids, learned = self._ids, self._learned
        for prompt, response in examples:
            ids += [*prompt, *response, self.eos_id]
            learned += [0] * len(prompt) + [1] * (len(response) + 1)
        n_blocks = len(ids) // self.block_len
        cut = n_blocks * self.block_len
        blocks = np.array([ids[:cut], learned[:cut]], dtype=np.int32).reshape(2, n_blocks, self.block_len)
        self._ids, self._learned = ids[cut:], learned[cut:]
        blocks = blocks.transpose(1, 0, 2)  # (n, 2, block_len)
        return np.ascontiguousarray(blocks[blocks[:, 1, 1:].any(axis=1)])
