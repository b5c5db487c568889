"""Sampling from a GPT with a KV cache: temperature, top-k, top-p, EOS stopping, seeded."""

from __future__ import annotations

import torch

from gptforge.models.gpt import GPT


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B, 1) from last-position logits (B, vocab_size); temperature 0 is greedy."""
    if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise ValueError(
            f"need temperature >= 0, top_k >= 1, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}"
        )
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth_largest = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # drop a token once the tokens ranked above it already cover top_p: the most likely always stays
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator)


@torch.no_grad()
def generate(
    model: GPT,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The prompt (B, T0) followed by up to `max_new_tokens` sampled tokens: (B, T0 + new).

    Each token is sampled given the last block_size tokens, exactly as a full forward over them would give.
    Up to block_size the KV cache makes each step one token's work; past it positions shift, so the cache
    is rebuilt from the window every step. Rows that have emitted `eos_id` are padded with it, and
    generation stops once every row has. Call `model.eval()` first unless dropout is wanted.
    """
    block_size = model.cfg.block_size
    tokens = input_ids
    cache = model.new_kv_cache()
    pending = tokens[:, -block_size:]  # tokens the cache has not seen yet
    finished = torch.zeros(tokens.size(0), dtype=torch.bool, device=tokens.device)
    for _ in range(max_new_tokens):
        if cache[0].length + pending.size(1) > block_size:
            cache, pending = model.new_kv_cache(), tokens[:, -block_size:]
        logits, _ = model(pending, kv_cache=cache)
        next_ids = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
        if eos_id is not None:
            next_ids = next_ids.masked_fill(finished.unsqueeze(1), eos_id)
            finished |= next_ids.squeeze(1) == eos_id
        tokens = torch.cat([tokens, next_ids], dim=1)
        pending = next_ids
        if eos_id is not None and bool(finished.all()):
            break
    return tokens
