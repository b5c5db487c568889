"""AdamW parameter groups: weight decay on linear weights only."""

from __future__ import annotations

import pytest
import torch

from gptforge.config import ModelConfig, OptimConfig
from gptforge.models import GPT
from gptforge.trainer.optim import build_optimizer, param_groups


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
@pytest.mark.parametrize("tie", [True, False])
def test_decay_only_on_linear_weights(flavour: str, tie: bool) -> None:
    model = GPT(
        ModelConfig(
            flavour=flavour, n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32, tie_embeddings=tie
        )
    )
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed and all(model.get_parameter(n).dim() == 2 for n in decayed)
    embeddings = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    assert not any(n.rsplit(".", 1)[0] in embeddings for n in decayed)
    assert all(model.get_parameter(n).dim() == 1 or n.rsplit(".", 1)[0] in embeddings for n in not_decayed)
    assert len(decayed) + len(not_decayed) == len(list(model.parameters()))


def test_optimizer_uses_configured_hyperparameters() -> None:
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    optimizer = build_optimizer(
        model, OptimConfig(lr=3e-4, betas=[0.8, 0.9], weight_decay=0.05), torch.device("cpu")
    )
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == 3e-4 and optimizer.defaults["betas"] == (0.8, 0.9)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
