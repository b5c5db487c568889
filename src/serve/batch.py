"""Rows of different lengths decoded together in one KV cache: join, step, leave, at any step.

The cache holds S key columns; row r's tokens are its last `lengths[r]` columns, left-padded. While every
row has the same length no mask is needed and the model runs exactly as for one sequence (so one request
alone decodes as `generate()` does); otherwise each step passes the rows' positions and real keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptforge.models import GPT, KVCache


def left_padded(rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded on the left to one length (with id 0, never attended): ids and real-token mask (B, T)."""
    T = max(map(len, rows))
    ids = torch.tensor([[0] * (T - len(row)) + row for row in rows], device=device)
    lengths = torch.tensor([len(row) for row in rows], device=device)
    real = torch.arange(T, device=device) >= (T - lengths).unsqueeze(1)
    return ids, real


class DecodeBatch:
    """The KV cache of the rows being decoded, and how long each row is."""

    def __init__(self, model: GPT) -> None:
        self.model = model
        self.cache: list[KVCache] = model.new_kv_cache()
        self.lengths: list[int] = []  # tokens of each row in the cache

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        """S: the cache's key columns, the longest row's length."""
        return self.cache[0].length

    def add(self, prompts: list[list[int]]) -> torch.Tensor:
        """Prefill new rows and join them to the batch; returns their next-token logits (n, vocab_size)."""
        device = self.model.lm_head.weight.device
        ids, real = left_padded(prompts, device)
        cache = self.model.new_kv_cache()
        if len({len(p) for p in prompts}) == 1:
            logits, _ = self.model(ids, kv_cache=cache)
        else:
            positions = (real.cumsum(dim=1) - 1).clamp(min=0)
            logits, _ = self.model(ids, kv_cache=cache, positions=positions, attention_mask=real)
        if self.lengths:
            width = max(self.width, ids.size(1))
            for ours, theirs in zip(self.cache, cache, strict=True):
                ours.k, ours.v = (
                    torch.cat([_pad_left(a, width), _pad_left(b, width)])
                    for a, b in ((ours.k, theirs.k), (ours.v, theirs.v))
                )
        else:
            self.cache = cache
        self.lengths += [len(p) for p in prompts]
        return logits[:, -1, :]

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed each row its next token; returns the logits after it (B, vocab_size)."""
        device = self.model.lm_head.weight.device
        ids = torch.tensor(tokens, device=device).unsqueeze(1)  # (B, 1)
        if len(set(self.lengths)) == 1:
            logits, _ = self.model(ids, kv_cache=self.cache)
        else:
            lengths = torch.tensor(self.lengths, device=device)
            width = self.width + 1
            real = torch.arange(width, device=device) >= (width - 1 - lengths).unsqueeze(1)  # (B, S + 1)
            logits, _ = self.model(
                ids, kv_cache=self.cache, positions=lengths.unsqueeze(1), attention_mask=real
            )
        self.lengths = [n + 1 for n in self.lengths]
        return logits[:, -1, :]

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in this order); columns that are padding for every kept row are dropped."""
        self.lengths = [self.lengths[r] for r in rows]
        if not rows:
            self.cache = self.model.new_kv_cache()
            return
        index = torch.tensor(rows, device=self.cache[0].k.device)
        drop = self.width - max(self.lengths)
        for layer in self.cache:
            layer.k, layer.v = layer.k[index, :, drop:], layer.v[index, :, drop:]


def _pad_left(kv: torch.Tensor, width: int) -> torch.Tensor:
    """(B, n_kv_head, S, head_dim) padded with zeros on the left to `width` columns."""
    return F.pad(kv, (0, 0, width - kv.size(2), 0))
