"""Rows joining and leaving one KV cache decode exactly as each row would alone."""

from __future__ import annotations

import pytest
import torch

from gptforge.config import ModelConfig
from gptforge.models import GPT, generate
from gptforge.serve.batch import DecodeBatch

MODELS = [("gpt2", {}), ("llama", {"n_kv_head": 2})]


def tiny(flavour: str, **kwargs) -> GPT:
    torch.manual_seed(0)
    # a large init_std makes every logit depend on the whole context
    fields = dict(flavour=flavour, n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=50, init_std=0.5)
    return GPT(ModelConfig(**fields | kwargs)).eval()


@pytest.mark.parametrize(("flavour", "extra"), MODELS)
@torch.no_grad()
def test_rows_joining_and_leaving_decode_as_each_row_alone(flavour: str, extra: dict) -> None:
    model = tiny(flavour, **extra)
    prompts = {
        name: torch.randint(0, 50, (n,)).tolist() for name, n in zip("abcd", (3, 9, 1, 5), strict=True)
    }
    batch, rows, tokens = DecodeBatch(model), [], {name: [] for name in prompts}

    def join(*names: str) -> None:
        logits = batch.add([prompts[name] for name in names])
        rows.extend(names)
        for name, row_logits in zip(names, logits, strict=True):
            tokens[name].append(int(row_logits.argmax()))

    def steps(n: int) -> None:
        for _ in range(n):
            logits = batch.step([tokens[name][-1] for name in rows])
            for name, row_logits in zip(rows, logits, strict=True):
                tokens[name].append(int(row_logits.argmax()))

    join("a")
    steps(3)
    join("b", "c")  # two new rows of different lengths, next to one already 7 tokens long
    steps(4)
    batch.keep([1, 2])  # "a" leaves: its columns before "b"'s go
    rows.remove("a")
    assert batch.width == max(batch.lengths)
    steps(2)
    join("d")
    steps(5)
    for name, prompt in prompts.items():
        alone = generate(model, torch.tensor([prompt]), len(tokens[name]), temperature=0)
        assert alone[0, len(prompt) :].tolist() == tokens[name], name


@torch.no_grad()
def test_one_row_alone_runs_the_very_computation_of_a_single_sequence() -> None:
    model = tiny("llama")
    prompt = torch.randint(0, 50, (1, 6))
    batch, cache = DecodeBatch(model), model.new_kv_cache()
    assert torch.equal(batch.add(prompt.tolist()), model(prompt, kv_cache=cache)[0][:, -1])
    for token in (4, 8, 15):
        assert torch.equal(batch.step([token]), model(torch.tensor([[token]]), kv_cache=cache)[0][:, -1])
