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
    """Next token ids (B, 1) from last-position logits (B, vocab); temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token once the ones before it already cover top_p (the most likely always stays)
        drop = cumulative - sorted_logits.softmax(dim=-1) > top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


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
    """Prompt (B, T0) followed by up to `max_new_tokens` sampled tokens (B, T0 + new).

    Decodes incrementally with a KV cache; once the sequence outgrows block_size, each step recomputes
    over the last block_size tokens (a sliding window). Rows that emitted `eos_id` keep emitting it,
    and generation stops when every row has.
    """
    block_size = model.cfg.block_size
    tokens = input_ids
    cache = model.new_kv_cache()
    pending = tokens[:, -block_size:]  # tokens the cache has not seen yet
    finished = torch.zeros(tokens.size(0), dtype=torch.bool, device=tokens.device)
    for _ in range(max_new_tokens):
        if cache[0].length + pending.size(1) > block_size:
            cache, pending = model.new_kv_cache(), tokens[:, -(block_size - 1) :]
        logits, _ = model(pending, kv_cache=cache)
        next_ids = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
        if eos_id is not None:
            next_ids = next_ids.masked_fill(finished.unsqueeze(1), eos_id)
            finished |= next_ids.squeeze(1) == eos_id
        tokens = torch.cat([tokens, next_ids], dim=1)
        pending = next_ids
        if eos_id is not None and bool(finished.all()):
            break
    return tokens
