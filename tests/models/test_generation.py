"""Sampling: the KV cache changes nothing but speed; seeds make samples repeatable; EOS stops rows."""

from __future__ import annotations

import pytest
import torch

from gptforge.config import ModelConfig
from gptforge.models import GPT, generate


def tiny(flavour: str, **kwargs) -> GPT:
    torch.manual_seed(0)
    # a large init_std makes the logits depend on the whole context, not just the last token
    fields = dict(flavour=flavour, n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50)
    return GPT(ModelConfig(**fields | {"init_std": 0.5} | kwargs)).eval()


MODELS = [("gpt2", {}), ("llama", {"n_kv_head": 2}), ("llama", {"n_kv_head": 1})]


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
    assert torch.allclose(incremental, full, atol=1e-4)


@pytest.mark.parametrize(("flavour", "extra"), MODELS[:2])
def test_greedy_generation_equals_argmax_of_full_recomputation(flavour: str, extra: dict) -> None:
    model = tiny(flavour, **extra)
    prompt = torch.randint(0, 50, (3, 4))
    out = generate(model, prompt, max_new_tokens=20, temperature=0)  # runs past block_size=16
    expected = prompt
    for _ in range(20):
        logits, _ = model(expected[:, -16:])
        expected = torch.cat([expected, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, expected)


def test_sampling_is_repeatable_under_a_seed() -> None:
    model = tiny("gpt2", init_std=0.02)
    prompt = torch.zeros(3, 1, dtype=torch.long)

    def sample(seed: int) -> torch.Tensor:
        return generate(
            model, prompt, 10, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))


@pytest.mark.parametrize("truncation", [{"top_k": 1}, {"top_p": 1e-6}])
def test_keeping_only_the_most_likely_token_is_greedy(truncation: dict) -> None:
    model = tiny("llama")
    prompt = torch.randint(0, 50, (2, 3))
    sampled = generate(
        model, prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(0), **truncation
    )
    assert torch.equal(sampled, generate(model, prompt, 8, temperature=0))


def test_generation_stops_right_after_eos() -> None:
    model = tiny("gpt2")
    prompt = torch.randint(0, 50, (1, 3))
    greedy = generate(model, prompt, 8, temperature=0)
    eos = int(greedy[0, 5])
    first_eos = int((greedy[0, 3:] == eos).nonzero()[0]) + 3
    assert torch.equal(generate(model, prompt, 8, temperature=0, eos_id=eos), greedy[:, : first_eos + 1])


def test_rows_that_emitted_eos_are_padded_with_it() -> None:
    model = tiny("gpt2")
    prompt = torch.randint(0, 50, (2, 3))
    greedy = generate(model, prompt, 8, temperature=0)
    eos = int(greedy[0, 4])  # row 0's second new token
    out = generate(model, prompt, 8, temperature=0, eos_id=eos)
    for row in range(2):
        hits = (greedy[row, 3:] == eos).nonzero()
        stop = int(hits[0]) + 3 + 1 if len(hits) else greedy.size(1)  # just past the row's first eos
        assert torch.equal(out[row, :stop], greedy[row, :stop])
        assert (out[row, stop:] == eos).all()
