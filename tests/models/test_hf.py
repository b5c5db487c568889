"""HF interop: an exported directory loads in `transformers` with our logits; HF models import exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers  # a dev dependency: installed by scripts/test.sh

from gptforge.config import LoraConfig, ModelConfig
from gptforge.errors import ConfigError
from gptforge.models import GPT
from gptforge.models.hf import from_hf, to_hf_state_dict
from gptforge.models.lora import apply_lora
from gptforge.trainer.checkpoint import load_hf_weights, write_hf_dir

VOCAB = 50


def tiny(flavour: str, **kwargs) -> GPT:
    torch.manual_seed(0)
    # a large init_std and random norms and biases: a wrongly mapped tensor changes the logits visibly
    fields = dict(flavour=flavour, n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=VOCAB)
    model = GPT(ModelConfig(**fields | {"init_std": 0.2} | kwargs)).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model


MODELS = [
    ("gpt2", {}, "GPT2LMHeadModel"),
    ("gpt2", {"n_kv_head": 2, "tie_embeddings": False, "intermediate_size": 48}, "GPT2LMHeadModel"),
    ("gpt2", {"bias": False}, "GPT2LMHeadModel"),
    ("llama", {"n_kv_head": 2}, "LlamaForCausalLM"),
    ("llama", {"n_kv_head": 1, "tie_embeddings": False, "bias": True, "rope_theta": 5e2}, "LlamaForCausalLM"),
]
IDS = [flavour + "".join(f"-{k}={v}" for k, v in extra.items()) for flavour, extra, _ in MODELS]


def export(model: GPT, directory: Path) -> None:
    hf_config, state = to_hf_state_dict(model, model.cfg, eos_token_id=VOCAB - 1)
    write_hf_dir(directory, hf_config, state)


@pytest.mark.parametrize(("flavour", "extra", "architecture"), MODELS, ids=IDS)
def test_exported_directory_loads_in_transformers_with_our_logits(
    flavour: str, extra: dict, architecture: str, tmp_path: Path
) -> None:
    model = tiny(flavour, **extra)
    export(model, tmp_path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert type(hf_model).__name__ == architecture
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        ours, theirs = model(ids)[0], hf_model(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-5


@pytest.mark.parametrize(("flavour", "extra", "architecture"), MODELS, ids=IDS)
def test_export_then_import_gives_back_the_same_model(flavour: str, extra: dict, architecture: str) -> None:
    model = tiny(flavour, **extra)
    cfg, state = from_hf(*to_hf_state_dict(model, model.cfg))
    imported = GPT(cfg).eval()
    imported.load_state_dict(state)
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        assert (imported(ids)[0] - model(ids)[0]).abs().max().item() < 1e-5
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (2, 4, 32, 16, VOCAB)
    assert cfg.tie_embeddings == model.cfg.tie_embeddings
    if flavour == "llama" or extra == {}:  # GPT2LMHeadModel has no GQA and no bias-free layers
        ours = model.state_dict()
        assert state.keys() == ours.keys()
        assert all(torch.equal(state[k], ours[k]) for k in ours)


def _hf_model(flavour: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if flavour == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=2, n_head=4)
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
        rms_norm_eps=1e-5,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_init_from_an_hf_directory_reproduces_its_logits(flavour: str, tmp_path: Path) -> None:
    hf_model = _hf_model(flavour)
    hf_model.save_pretrained(tmp_path)
    if flavour == "gpt2":
        cfg = ModelConfig(flavour="gpt2", vocab_size=VOCAB, block_size=16, n_layer=2, n_head=4, n_embd=32)
    else:
        cfg = ModelConfig(
            flavour="llama",
            vocab_size=VOCAB,
            block_size=16,
            n_layer=2,
            n_head=4,
            n_kv_head=2,
            n_embd=32,
            intermediate_size=64,
            tie_embeddings=False,
        )
    model = GPT(cfg).eval()
    model.load_state_dict(load_hf_weights(f"hf:{tmp_path}", cfg))
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        assert (model(ids)[0] - hf_model(ids).logits).abs().max().item() < 1e-5


def test_init_from_another_architecture_names_the_overrides_to_set(tmp_path: Path) -> None:
    export(tiny("llama", n_kv_head=2), tmp_path)
    run_cfg = ModelConfig(flavour="llama", vocab_size=VOCAB, block_size=16, n_layer=4, n_head=4, n_embd=32)
    with pytest.raises(ConfigError, match=r"set model\.n_layer=2 model\.n_kv_head=2"):
        load_hf_weights(f"hf:{tmp_path}", run_cfg)


def test_export_refuses_unmerged_lora_adapters() -> None:
    model = tiny("gpt2")
    apply_lora(model, LoraConfig(rank=2))
    with pytest.raises(ConfigError, match="merge_lora"):
        to_hf_state_dict(model, model.cfg)
