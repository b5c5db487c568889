"""The speedrun switches of ModelConfig: each changes the computation as it claims, and only then."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptforge.config import ModelConfig
from gptforge.errors import ConfigError
from gptforge.models import GPT
from gptforge.models.hf import to_hf_state_dict

EOS = 0


def tiny(**switches) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=24, **switches)
    return GPT(cfg).eval()


def test_doc_mask_keeps_a_document_from_seeing_the_one_before_it() -> None:
    ids = torch.tensor([[5, 6, 7, EOS, 8, 9, 10, 11]])  # document 1 is 5 6 7 EOS, document 2 the rest
    edited = ids.clone()
    edited[0, 1] = 12  # a token of document 1
    masked = tiny(doc_mask=True, eos_id=EOS)
    before, after = masked(ids)[0], masked(edited)[0]
    assert torch.equal(before[0, 4:], after[0, 4:])  # document 2 never saw it
    assert not torch.allclose(before[0, 1:4], after[0, 1:4])  # document 1 did
    plain = tiny()
    assert not torch.allclose(plain(ids)[0][0, 4:], plain(edited)[0][0, 4:])  # without the mask it leaks
    # one document only: the mask is the causal mask
    single = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(masked(single)[0], tiny(eos_id=EOS)(single)[0])


def test_doc_mask_without_an_eos_id_says_what_sets_it() -> None:
    with pytest.raises(ValueError, match=r"model\.doc_mask needs model\.eos_id"):
        tiny(doc_mask=True)(torch.tensor([[1, 2]]))


def test_qk_norm_makes_attention_blind_to_the_scale_of_q_and_k() -> None:
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    changes = {}
    for qk_norm in (True, False):
        model = tiny(qk_norm=qk_norm)
        before = model(ids)[0]
        with torch.no_grad():  # the query and key rows (2 heads x 8 each) of the fused projection, x10
            model.blocks[0].attn.qkv.weight[:32] *= 10.0
            model.blocks[0].attn.qkv.bias[:32] *= 10.0
        changes[qk_norm] = (model(ids)[0] - before).abs().max().item()
    assert changes[True] < 1e-4 < 1e-2 < changes[False]  # only RMSNorm's eps remains


def test_logit_softcap_bounds_the_logits_by_tanh() -> None:
    ids = torch.tensor([[1, 2, 3, 4]])
    capped, plain = tiny(logit_softcap=0.05), tiny()
    raw = plain(ids)[0]
    logits = capped(ids)[0]
    assert raw.abs().max() > 0.05 and logits.abs().max() < 0.05
    torch.testing.assert_close(logits, 0.05 * torch.tanh(raw / 0.05))


def test_relu2_mlp_is_relu_squared() -> None:
    mlp = tiny(mlp="relu2").blocks[0].mlp
    x = torch.randn(3, 16)
    torch.testing.assert_close(mlp(x), mlp.proj(F.relu(mlp.fc(x)) ** 2))
    assert mlp.fc.out_features == 64  # 4 x n_embd, as GELU's


def test_zero_init_proj_starts_every_block_as_the_identity() -> None:
    model = tiny(zero_init_proj=True)
    projections = [m for n, m in model.named_modules() if n.endswith(".proj")]
    assert len(projections) == 4 and all(not p.weight.any() for p in projections)
    assert model.blocks[0].attn.qkv.weight.std() > 0.01  # the rest keeps its init
    x = torch.randn(1, 5, 16)
    torch.testing.assert_close(model.blocks[0](x), x)
    assert all(p.weight.any() for n, p in tiny().named_modules() if n.endswith(".proj"))


def test_z_loss_adds_its_gradient_but_not_its_value() -> None:
    ids, targets = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[2, 3, 4, 5, -100]])
    with_z, plain = tiny(z_loss=0.5), tiny()
    _, loss = with_z(ids, targets)
    plain_logits, plain_loss = plain(ids, targets)
    assert loss.item() == plain_loss.item()  # the reported loss stays the cross-entropy
    # the gradient is that of CE + 0.5 * mean(logsumexp^2) over the scored tokens
    lse = torch.logsumexp(plain_logits[0, :4], dim=-1)
    (plain_loss + 0.5 * lse.square().mean()).backward()
    loss.backward()
    expected = plain.lm_head.weight.grad
    torch.testing.assert_close(with_z.lm_head.weight.grad, expected)
    cross_entropy_only = tiny()
    cross_entropy_only(ids, targets)[1].backward()
    assert not torch.allclose(cross_entropy_only.lm_head.weight.grad, expected, atol=1e-4)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mlp", "relu3", "model.mlp='relu3' is not valid; choose one of: gelu, swiglu, relu2"),
        ("logit_softcap", -1.0, "model.logit_softcap=-1.0 is not valid; it must be >= 0"),
        ("z_loss", -0.1, "model.z_loss=-0.1 is not valid; it must be >= 0"),
    ],
)
def test_bad_switch_values_are_one_line_errors(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        ModelConfig(**{field: value})
    assert str(err.value) == message


@pytest.mark.parametrize("switch", [{"qk_norm": True}, {"logit_softcap": 15.0}, {"mlp": "relu2"}])
def test_hf_export_refuses_what_gpt2_and_llama_cannot_compute(switch: dict) -> None:
    model = tiny(**switch)
    with pytest.raises(ConfigError, match=r"model\.(qk_norm|logit_softcap|norm/mlp/position)"):
        to_hf_state_dict(model, model.cfg)
    exportable = tiny(z_loss=1e-4, zero_init_proj=True, doc_mask=True, eos_id=EOS)
    assert to_hf_state_dict(exportable, exportable.cfg)[0]["model_type"] == "gpt2"
