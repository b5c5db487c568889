"""LoRA: only adapters train, merging reproduces the adapted model, adapters save and load on their own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config

from gptforge.config import LoraConfig, ModelConfig, OptimConfig
from gptforge.errors import ConfigError
from gptforge.models import GPT
from gptforge.models.hf import to_hf_state_dict
from gptforge.models.lora import LoRALinear, apply_lora, merge_lora
from gptforge.trainer.checkpoint import load_lora_adapters, save_lora_adapters
from gptforge.trainer.optim import build_optimizer

VOCAB = 50


def tiny(flavour: str = "gpt2", **kwargs) -> GPT:
    torch.manual_seed(0)
    fields = dict(flavour=flavour, n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=VOCAB)
    return GPT(ModelConfig(**fields | kwargs))


def fine_tune(model: GPT, steps: int = 5) -> None:
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.0), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (4, 16), generator=generator)
        _, loss = model(ids, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize(
    ("flavour", "targets"),
    [("gpt2", ["attn.qkv", "attn.proj"]), ("llama", ["qkv", "proj", "gate", "up", "lm_head"])],
)
def test_only_adapters_train_and_merging_reproduces_the_adapted_logits(flavour: str, targets: list) -> None:
    extra = {"n_kv_head": 2} if flavour == "llama" else {}
    model = tiny(flavour, **extra)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = apply_lora(model, LoraConfig(rank=4, alpha=8.0, target_modules=targets))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{name}.{ab}" for name in wrapped for ab in ("lora_a", "lora_b")}
    assert "lm_head" in wrapped or flavour == "gpt2"

    fine_tune(model)
    after = model.state_dict()
    assert all(torch.equal(after[k], base[k]) for k in base)  # the base never moved
    assert all(after[f"{name}.lora_b"].abs().sum() > 0 for name in wrapped)  # the adapters did

    model.eval()
    ids = torch.randint(0, VOCAB, (2, 16))
    plain = tiny(flavour, **extra).eval()
    with torch.no_grad():
        adapted = model(ids)[0]
        merged = merge_lora(model)(ids)[0]
        assert not torch.allclose(plain(ids)[0], adapted)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert model.state_dict().keys() == base.keys()
    assert (merged - adapted).abs().max().item() < 1e-5
    to_hf_state_dict(model, model.cfg)  # merged: exportable


def test_adapters_change_the_model_and_reload_from_their_own_file(tmp_path: Path) -> None:
    cfg = LoraConfig(rank=2, target_modules=["proj"])
    model = tiny()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, cfg)
    fine_tune(model, steps=3)
    path = save_lora_adapters(model, tmp_path, cfg)
    assert path.name == "lora.safetensors"

    fresh = tiny()
    fresh.load_state_dict(base)
    assert load_lora_adapters(fresh, tmp_path) == cfg
    ids = torch.randint(0, VOCAB, (2, 16))
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(ids)[0], model(ids)[0])
        plain = tiny().eval()
        plain.load_state_dict(base)
        assert not torch.allclose(plain(ids)[0], model(ids)[0])


def test_rank_zero_changes_nothing_and_unknown_targets_name_the_valid_ones() -> None:
    model = tiny()
    assert apply_lora(model, LoraConfig()) == []
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match=r"\['attn.q'\] match no linear layer; valid names: .*attn.qkv"):
        apply_lora(model, LoraConfig(rank=2, target_modules=["attn.q"]))


def test_lora_is_set_from_the_command_line_and_validated() -> None:
    cfg = compose_config([*TINY, "model.lora.rank=8", "model.lora.target_modules=[attn.qkv,mlp.fc]"])
    assert (cfg.model.lora.rank, list(cfg.model.lora.target_modules)) == (8, ["attn.qkv", "mlp.fc"])
    with pytest.raises(ConfigError, match=r"model\.lora\.dropout=1\.5"):
        compose_config([*TINY, "model.lora.rank=8", "model.lora.dropout=1.5"])
