"""The GPT model: shapes, causality, grouped-query attention, tying, init, parameter and FLOP counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gptforge.config import ModelConfig
from gptforge.models import GPT


def tiny(flavour: str = "gpt2", **kwargs) -> GPT:
    torch.manual_seed(0)
    fields = dict(flavour=flavour, n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50) | kwargs
    return GPT(ModelConfig(**fields)).eval()


FLAVOURS = [("gpt2", {}), ("llama", {}), ("llama", {"n_kv_head": 2}), ("llama", {"n_kv_head": 1})]


@pytest.mark.parametrize(("flavour", "extra"), FLAVOURS)
def test_logits_shape_and_loss(flavour: str, extra: dict) -> None:
    model = tiny(flavour, **extra)
    ids = torch.randint(0, 50, (3, 16))
    logits, loss = model(ids, ids)
    assert logits.shape == (3, 16, 50)
    assert loss.item() == pytest.approx(F.cross_entropy(logits.view(-1, 50), ids.view(-1)).item(), rel=1e-6)
    assert model(ids)[1] is None


@pytest.mark.parametrize(("flavour", "extra"), FLAVOURS)
def test_a_future_token_cannot_change_an_earlier_logit(flavour: str, extra: dict) -> None:
    model = tiny(flavour, **extra)
    ids = torch.randint(0, 50, (2, 12))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 50
    a, _ = model(ids)
    b, _ = model(changed)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_targets_of_minus_100_carry_no_loss() -> None:
    model = tiny()
    ids = torch.randint(0, 50, (2, 8))
    targets = ids.clone()
    targets[:, :5] = -100
    logits, loss = model(ids, targets)
    expected = F.cross_entropy(logits[:, 5:].reshape(-1, 50), ids[:, 5:].reshape(-1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_grouped_query_attention_has_fewer_key_value_weights() -> None:
    full, grouped = tiny("llama"), tiny("llama", n_kv_head=1)
    head_dim = 32 // 4
    assert full.blocks[0].attn.qkv.weight.shape == ((4 + 2 * 4) * head_dim, 32)
    assert grouped.blocks[0].attn.qkv.weight.shape == ((4 + 2 * 1) * head_dim, 32)


def test_weight_tying_shares_the_embedding_with_the_head() -> None:
    tied, untied = tiny(tie_embeddings=True), tiny(tie_embeddings=False)
    assert tied.lm_head.weight.data_ptr() == tied.wte.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()
    assert untied.num_params(non_embedding=False) == tied.num_params(non_embedding=False) + 50 * 32


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_residual_projections_use_the_scaled_init(flavour: str) -> None:
    model = GPT(ModelConfig(flavour=flavour, n_layer=8, n_head=4, n_embd=256, block_size=16, vocab_size=64))
    block = model.blocks[0]
    assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.attn.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert block.mlp.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)


def test_parameter_count_matches_a_hand_count() -> None:
    C, V, T, L = 32, 50, 16, 2
    per_block = (2 * C + 2 * C) + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    non_embedding = L * per_block + 2 * C  # blocks and the final LayerNorm
    model = tiny()
    assert model.num_params() == non_embedding
    assert model.num_params(non_embedding=False) == non_embedding + V * C + T * C


def test_flops_per_token_is_six_n_plus_the_attention_term() -> None:
    model = tiny()
    n = model.num_params() + 50 * 32  # the tied head is a matmul too
    assert model.flops_per_token() == 6 * n + 12 * 2 * 4 * 8 * 16
    assert model.flops_per_token(seq_len=8) == 6 * n + 12 * 2 * 4 * 8 * 8
    assert tiny(tie_embeddings=False).flops_per_token() == model.flops_per_token()  # same matmuls


def test_gpt2_124m_has_124m_parameters() -> None:
    with torch.device("meta"):
        model = GPT(ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257))
    assert model.num_params(non_embedding=False) == 124_439_808  # the published GPT-2 small count


def test_a_model_built_on_meta_is_complete_after_to_empty_and_reset() -> None:
    cfg = ModelConfig(flavour="llama", n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50)
    eager = GPT(cfg)
    with torch.device("meta"):
        deferred = GPT(cfg)
    deferred.to_empty(device="cpu")
    for model in (eager, deferred):
        torch.manual_seed(1)
        model.reset_parameters()
    ids = torch.randint(0, 50, (2, 16))
    assert torch.equal(eager(ids)[0], deferred(ids)[0])


def test_missing_vocab_size_and_overlong_input_are_refused() -> None:
    with pytest.raises(ValueError, match=r"model\.vocab_size"):
        GPT(ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=8))
    with pytest.raises(ValueError, match=r"model\.block_size=16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_a_few_steps_on_one_batch_reduce_the_loss(flavour: str) -> None:
    model = tiny(flavour).train()
    ids = torch.randint(0, 50, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        _, loss = model(ids, ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


def left_padded(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows padded on the left to one length: ids, positions (B, T) and the mask of real tokens."""
    T = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (T - len(row)) + row for row in rows])
    real = torch.tensor([[False] * (T - len(row)) + [True] * len(row) for row in rows])
    positions = (real.cumsum(dim=1) - 1).clamp(min=0)
    return ids, positions, real


@pytest.mark.parametrize(("flavour", "extra"), FLAVOURS)
def test_left_padded_rows_decode_as_each_row_alone(flavour: str, extra: dict) -> None:
    model = tiny(flavour, **extra, init_std=0.5)  # a large init makes every logit depend on the context
    rows = [torch.randint(1, 50, (n,)).tolist() for n in (5, 9, 2)]
    continuation = torch.randint(1, 50, (3, 4))
    ids, positions, real = left_padded(rows)
    cache = model.new_kv_cache()
    prefill, _ = model(ids, kv_cache=cache, positions=positions, attention_mask=real)
    steps = []
    for t in range(continuation.size(1)):
        positions = positions[:, -1:] + 1
        real = torch.cat([real, torch.ones(3, 1, dtype=torch.bool)], dim=1)
        steps.append(
            model(continuation[:, t : t + 1], kv_cache=cache, positions=positions, attention_mask=real)[0]
        )
    assert not prefill.isnan().any()
    for i, row in enumerate(rows):
        alone, _ = model(torch.tensor([row + continuation[i].tolist()]))
        assert torch.allclose(prefill[i, -len(row) :], alone[0, : len(row)], atol=1e-5)
        assert torch.allclose(torch.cat(steps, dim=1)[i], alone[0, len(row) :], atol=1e-5)


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_explicit_positions_give_the_very_same_logits(flavour: str) -> None:
    model = tiny(flavour)
    ids = torch.randint(0, 50, (2, 10))
    cache, explicit = model.new_kv_cache(), model.new_kv_cache()
    expected = torch.cat([model(ids[:, :6], kv_cache=cache)[0], model(ids[:, 6:], kv_cache=cache)[0]], dim=1)
    positions = torch.arange(10).expand(2, 10)
    first, _ = model(ids[:, :6], kv_cache=explicit, positions=positions[:, :6])
    second, _ = model(ids[:, 6:], kv_cache=explicit, positions=positions[:, 6:])
    assert torch.equal(torch.cat([first, second], dim=1), expected)


def test_positions_and_masks_of_the_wrong_shape_or_range_are_refused() -> None:
    model, ids = tiny(), torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"positions has shape \(4,\)"):
        model(ids, positions=torch.arange(4))
    with pytest.raises(ValueError, match=r"model\.block_size=16"):
        model(ids, positions=torch.full((2, 4), 16))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 3\)"):
        model(ids, attention_mask=torch.ones(2, 3, dtype=torch.bool))


def test_every_component_choice_of_the_config_has_a_builder_and_mixes_freely() -> None:
    from gptforge import config
    from gptforge.errors import ConfigError
    from gptforge.models import layers
    from gptforge.models.hf import to_hf_state_dict

    assert set(config.NORMS) == set(layers.NORMS) and set(config.MLPS) == set(layers.MLPS)
    # a GPT-2 preset with Llama's MLP and rotary positions: built from the fields, whatever the flavour
    cfg = ModelConfig(
        vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16, mlp="swiglu", position="rope"
    )
    assert (cfg.components.norm, cfg.components.mlp, cfg.components.position) == (
        "layernorm",
        "swiglu",
        "rope",
    )
    model = GPT(cfg)
    assert model.wpe is None and hasattr(model.blocks[0].mlp, "gate")
    _, loss = model(torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16)))
    loss.backward()
    with pytest.raises(
        ConfigError, match=r"model.norm/mlp/position=layernorm/swiglu/rope has no Hugging Face"
    ):
        to_hf_state_dict(model, cfg)
