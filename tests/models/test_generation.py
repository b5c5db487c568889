"""Sampling: the KV cache changes nothing but speed; seeds make samples repeatable; EOS stops rows."""

from __future__ import annotations

import pytest
import torch

from gptforge.config import ModelConfig
from gptforge.models import GPT, generate


def tiny(flavour: str, **kwargs) -> GPT:
    torch.manual_seed(0)
    fields = dict(flavour=flavour, n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50) | kwargs
    return GPT(ModelConfig(**fields)).eval()


MODELS = [("gpt2", {}), ("llama", {"n_kv_head": 2})]


@pytest.mark.parametrize(("flavour", "extra"), MODELS)
def test_kv_cache_logits_equal_full_recomputation(flavour: str, extra: dict) -> None:
    model = tiny(flavour, **extra)
    ids = torch.randint(0, 50, (2, 12))
    full, _ = model(ids)
    cache = model.new_kv_cache()
    prefill, _ = model(ids[:, :5], kv_cache=cache)
    steps = [model(ids[:, t : t + 1], kv_cache=cache)[0] for t in range(5, 9)]
    chunk, _ = model(ids[:, 9:], kv_cache=cache)  # several new tokens on top of a cache
    incremental = torch.cat([prefill, *steps, chunk], dim=1)
    assert torch.allclose(incremental, full, atol=1e-5)


@pytest.mark.parametrize(("flavour", "extra"), MODELS)
def test_greedy_generation_equals_argmax_of_full_recomputation(flavour: str, extra: dict) -> None:
    model = tiny(flavour, **extra)
    prompt = torch.randint(0, 50, (2, 4))
    out = generate(model, prompt, max_new_tokens=20, temperature=0)  # runs past block_size=16
    expected = prompt
    for _ in range(20):
        logits, _ = model(expected[:, -16:])
        expected = torch.cat([expected, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, expected)


def test_sampling_is_repeatable_under_a_seed() -> None:
    model = tiny("gpt2")
    prompt = torch.zeros(3, 1, dtype=torch.long)

    def sample(seed: int) -> torch.Tensor:
        return generate(
            model, prompt, 10, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))


def test_top_k_of_one_is_greedy() -> None:
    model = tiny("llama")
    prompt = torch.randint(0, 50, (2, 3))
    sampled = generate(model, prompt, 8, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, generate(model, prompt, 8, temperature=0))


def test_rows_stop_at_eos() -> None:
    model = tiny("gpt2")
    prompt = torch.randint(0, 50, (2, 3))
    greedy = generate(model, prompt, 6, temperature=0)
    eos = int(greedy[0, 4])  # row 0 emits this as its second new token
    out = generate(model, prompt, 6, temperature=0, eos_id=eos)
    first_eos = (out[0, 3:] == eos).nonzero()[0].item() + 3
    assert (out[0, first_eos:] == eos).all()
