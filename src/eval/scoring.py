"""The model side of evaluation: log-likelihoods of continuations and greedy answers, with the KV cache.

Every call makes a fixed number of forwards whatever the example (two per scored context; one per generated
token, for as long as any rank still generates), so ranks of a sharded model (FSDP, ZeRO-3), whose every
forward gathers the weights, stay in step while each scores its own examples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # host.py imports gptforge.trainer, which imports this module
    from gptforge.eval.host import EvalHost


@torch.no_grad()
def continuation_logprobs(
    host: EvalHost, context_ids: list[int], continuations: list[list[int]]
) -> tuple[list[float], list[bool]]:
    """Summed log-probability of each continuation after the context, and whether greedy decoding gives it.

    The context runs once; its KV cache is shared by the candidates, which run as one right-padded batch.
    A context too long for the window loses its oldest tokens so that the longest continuation fits
    (lm-eval cuts `(context + continuation)[-(block_size + 1):]` per continuation).
    """
    model, block_size = host.unwrapped_model, host.unwrapped_model.cfg.block_size
    n, longest = len(continuations), max(len(ids) for ids in continuations)
    if not context_ids or longest == 0 or longest > block_size:
        raise ValueError(f"need a context and continuations of 1..{block_size} tokens, got {longest}")
    context = torch.tensor([context_ids[-(block_size + 1 - longest) :]], device=host.device)  # (1, T)
    targets = torch.zeros(n, longest, dtype=torch.long)  # (n, longest), right-padded
    for row, ids in enumerate(continuations):
        targets[row, : len(ids)] = torch.tensor(ids)
    targets = targets.to(host.device)
    lengths = torch.tensor([len(ids) for ids in continuations], device=host.device)
    cache = model.new_kv_cache()
    with host.autocast():
        logits, _ = host.model(context, kv_cache=cache)
        logprobs = logits[:, -1:].float().log_softmax(-1).expand(n, -1, -1)  # (n, 1, vocab_size)
        if longest > 1:
            for layer in cache:
                layer.expand(n)
            rest, _ = host.model(targets[:, :-1], kv_cache=cache)  # (n, longest - 1, vocab_size)
            logprobs = torch.cat([logprobs, rest.float().log_softmax(-1)], dim=1)
        elif host.shards_parameters:
            host.model(context[:, :1])  # the second forward every other example makes
    scored = torch.arange(longest, device=host.device) < lengths.unsqueeze(1)  # (n, longest)
    token_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * scored
    greedy = ((logprobs.argmax(-1) == targets) | ~scored).all(dim=1)
    return token_logprobs.sum(dim=1).tolist(), greedy.tolist()


@torch.no_grad()
def greedy_answer(
    host: EvalHost,
    prompt_ids: list[int],
    max_new_tokens: int,
    eos_id: int,
    stop: list[str],
    decode: Callable[[list[int]], str],
) -> str:
    """The greedy continuation of the prompt up to EOS, a stop string (cut off) or `max_new_tokens`.

    The prompt keeps its last `block_size - max_new_tokens` tokens, as lm-eval cuts it, so the cache never
    overflows. On a sharded model every rank runs until no rank is still generating.
    """
    model, block_size = host.unwrapped_model, host.unwrapped_model.cfg.block_size
    pending = torch.tensor([prompt_ids[-(block_size - max_new_tokens) :]], device=host.device)
    cache = model.new_kv_cache()
    generated: list[int] = []
    done = False
    for _ in range(max_new_tokens):
        with host.autocast():
            logits, _ = host.model(pending, kv_cache=cache)
        next_id = int(logits[0, -1].argmax())
        if not done:
            done = next_id == eos_id
            if not done:
                generated.append(next_id)
                done = bool(stop) and any(s in decode(generated) for s in stop)
        if not (host.broadcast_flag(not done) if host.shards_parameters else not done):
            break
        pending = torch.tensor([[next_id]], device=host.device)
    text = decode(generated)
    for s in stop:
        text = text.split(s)[0]
    return text
