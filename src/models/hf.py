"""Hugging Face `transformers` interop by name and tensor mapping alone: GPT-2 ↔ GPT2LMHeadModel, Llama ↔
LlamaForCausalLM, chosen by the model's component fields. No files and no `transformers` import: callers
read and write the directory.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from gptforge.config import ModelConfig
from gptforge.errors import CheckpointError, ConfigError
from gptforge.models.lora import LORA_KEYS

StateDict = dict[str, torch.Tensor]
# (norm, mlp, position) -> the HF model type with those components
HF_ARCHITECTURES = {("layernorm", "gelu", "learned"): "gpt2", ("rmsnorm", "swiglu", "rope"): "llama"}


def hf_model_type(cfg: ModelConfig) -> str:
    """The HF model type of `cfg`'s components; ConfigError where no HF class has them."""
    # z_loss and zero_init_proj only change training, doc_mask only packed blocks: those export as they are
    unsupported = [f"model.{key}" for key in ("qk_norm", "logit_softcap") if getattr(cfg, key)]
    if unsupported:
        raise ConfigError(
            f"{', '.join(unsupported)} has no Hugging Face GPT-2 or Llama equivalent; not exported"
        )
    parts = cfg.components
    components = (parts.norm, parts.mlp, parts.position)
    if components not in HF_ARCHITECTURES:
        known = "; ".join(f"{'/'.join(key)} ({name})" for key, name in HF_ARCHITECTURES.items())
        raise ConfigError(
            f"model.norm/mlp/position={'/'.join(components)} has no Hugging Face model class; "
            f"the exported ones are {known}"
        )
    return HF_ARCHITECTURES[components]


def to_hf_state_dict(
    model_or_state: nn.Module | Mapping[str, torch.Tensor], cfg: ModelConfig, eos_token_id: int | None = None
) -> tuple[dict, StateDict]:
    """The `config.json` dict and safetensors-ready state dict of the equivalent HF model.

    GPT-2 components with grouped-query attention are exported as multi-head (k/v heads repeated, the same
    function); missing biases (`model.bias=false`) become zeros, as GPT2LMHeadModel always has them.
    Merge LoRA adapters first (`merge_lora`).
    """
    ours = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    adapters = [k for k in ours if k.rsplit(".", 1)[-1] in LORA_KEYS]
    if adapters:
        raise ConfigError(f"the model still has LoRA adapters ({adapters[0]}, ...); merge_lora(model) first")
    if hf_model_type(cfg) == "gpt2":
        return _gpt2_config(cfg, ours, eos_token_id), _to_gpt2(cfg, ours)
    return _llama_config(cfg, ours, eos_token_id), _to_llama(cfg, ours)


def from_hf(hf_config: Mapping, hf_state: Mapping[str, torch.Tensor]) -> tuple[ModelConfig, StateDict]:
    """Our ModelConfig (vocab_size set) and state dict for an HF GPT2LMHeadModel or LlamaForCausalLM."""
    cfg = model_config_from_hf(hf_config)
    if hf_model_type(cfg) == "gpt2":
        state = _from_gpt2(cfg, _with_prefix(hf_state, "transformer.", "h.0.ln_1.weight"))
    else:
        state = _from_llama(cfg, _with_prefix(hf_state, "model.", "layers.0.input_layernorm.weight"))
    if cfg.tie_embeddings or "lm_head.weight" not in state:
        state["lm_head.weight"] = state["wte.weight"]
    return cfg, state


def model_config_from_hf(hf_config: Mapping) -> ModelConfig:
    """Our ModelConfig (vocab_size set) for an HF GPT2LMHeadModel or LlamaForCausalLM `config.json`."""
    model_type = hf_config.get("model_type")
    if model_type == "gpt2":
        return _gpt2_model_config(hf_config)
    if model_type == "llama":
        return _llama_model_config(hf_config)
    raise ConfigError(f"HF model_type={model_type!r} is not supported; gptforge imports gpt2 and llama")


def _with_prefix(state: Mapping[str, torch.Tensor], prefix: str, probe: str) -> Mapping[str, torch.Tensor]:
    # a base model (GPT2Model, LlamaModel) saves its keys without the causal-LM wrapper's prefix
    if probe in state:
        return {(k if k == "lm_head.weight" else prefix + k): v for k, v in state.items()}
    return state


def _get(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"the HF weights have no {key}; they do not fit their config.json")
    return state[key]


def _qkv_split(cfg: ModelConfig, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    return tensor.split([q_dim, kv_dim, kv_dim], dim=0)


def _repeat_kv(cfg: ModelConfig, tensor: torch.Tensor) -> torch.Tensor:
    # (n_kv_head * head_dim, ...) -> (n_head * head_dim, ...): kv head j serves query heads j*group..
    group = cfg.n_head // cfg.kv_heads
    heads = tensor.reshape(cfg.kv_heads, cfg.head_dim, *tensor.shape[1:])
    return heads.repeat_interleave(group, dim=0).reshape(cfg.n_head * cfg.head_dim, *tensor.shape[1:])


def _bias(ours: Mapping[str, torch.Tensor], key: str, like: torch.Tensor) -> torch.Tensor:
    return ours[key] if key in ours else torch.zeros(like.size(0), dtype=like.dtype)


def _head(cfg: ModelConfig, ours: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # a tied head is HF's default: the loader re-ties it, and safetensors refuses shared tensors
    return {} if cfg.tie_embeddings else {"lm_head.weight": ours["lm_head.weight"]}


def _contiguous(state: Mapping[str, torch.Tensor]) -> StateDict:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


_GPT2_LINEARS = (("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj"))
_GPT2_NORMS = (("norm_1", "ln_1"), ("norm_2", "ln_2"))


def _to_gpt2(cfg: ModelConfig, ours: Mapping[str, torch.Tensor]) -> StateDict:
    hf = {"transformer.wte.weight": ours["wte.weight"], "transformer.wpe.weight": ours["wpe.weight"]}
    for i in range(cfg.n_layer):
        b, h = f"blocks.{i}.", f"transformer.h.{i}."
        q, k, v = _qkv_split(cfg, ours[b + "attn.qkv.weight"])
        qkv_bias = _bias(ours, b + "attn.qkv.bias", ours[b + "attn.qkv.weight"])
        qb, kb, vb = _qkv_split(cfg, qkv_bias)
        # Conv1D stores (in, out): every linear weight is transposed
        hf[h + "attn.c_attn.weight"] = torch.cat([q, _repeat_kv(cfg, k), _repeat_kv(cfg, v)]).T
        hf[h + "attn.c_attn.bias"] = torch.cat([qb, _repeat_kv(cfg, kb), _repeat_kv(cfg, vb)])
        for ours_name, hf_name in _GPT2_LINEARS:
            weight = ours[f"{b}{ours_name}.weight"]
            hf[f"{h}{hf_name}.weight"] = weight.T
            hf[f"{h}{hf_name}.bias"] = _bias(ours, f"{b}{ours_name}.bias", weight)
        for ours_name, hf_name in _GPT2_NORMS:
            weight = ours[f"{b}{ours_name}.weight"]
            hf[f"{h}{hf_name}.weight"] = weight
            hf[f"{h}{hf_name}.bias"] = _bias(ours, f"{b}{ours_name}.bias", weight)
    hf["transformer.ln_f.weight"] = ours["norm_f.weight"]
    hf["transformer.ln_f.bias"] = _bias(ours, "norm_f.bias", ours["norm_f.weight"])
    return _contiguous(hf | _head(cfg, ours))


def _from_gpt2(cfg: ModelConfig, hf: Mapping[str, torch.Tensor]) -> StateDict:
    ours = {name: _get(hf, f"transformer.{name}") for name in ("wte.weight", "wpe.weight")}
    for i in range(cfg.n_layer):
        b, h = f"blocks.{i}.", f"transformer.h.{i}."
        for ours_name, hf_name in (("attn.qkv", "attn.c_attn"), *_GPT2_LINEARS):
            ours[f"{b}{ours_name}.weight"] = _get(hf, f"{h}{hf_name}.weight").T
            ours[f"{b}{ours_name}.bias"] = _get(hf, f"{h}{hf_name}.bias")
        for ours_name, hf_name in _GPT2_NORMS:
            ours[f"{b}{ours_name}.weight"] = _get(hf, f"{h}{hf_name}.weight")
            ours[f"{b}{ours_name}.bias"] = _get(hf, f"{h}{hf_name}.bias")
    ours["norm_f.weight"] = _get(hf, "transformer.ln_f.weight")
    ours["norm_f.bias"] = _get(hf, "transformer.ln_f.bias")
    if "lm_head.weight" in hf:
        ours["lm_head.weight"] = hf["lm_head.weight"]
    return _contiguous(ours)


_LLAMA_LINEARS = (
    ("attn.proj", "self_attn.o_proj"),
    ("mlp.gate", "mlp.gate_proj"),
    ("mlp.up", "mlp.up_proj"),
    ("mlp.proj", "mlp.down_proj"),
)


def _to_llama(cfg: ModelConfig, ours: Mapping[str, torch.Tensor]) -> StateDict:
    hf = {"model.embed_tokens.weight": ours["wte.weight"], "model.norm.weight": ours["norm_f.weight"]}
    suffixes = ("weight", "bias") if cfg.components.bias else ("weight",)
    for i in range(cfg.n_layer):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        for suffix in suffixes:
            # RoPE uses HF's rotate_half layout already: q and k rows need no permutation
            q, k, v = _qkv_split(cfg, ours[f"{b}attn.qkv.{suffix}"])
            hf |= {f"{h}self_attn.q_proj.{suffix}": q, f"{h}self_attn.k_proj.{suffix}": k}
            hf[f"{h}self_attn.v_proj.{suffix}"] = v
            for ours_name, hf_name in _LLAMA_LINEARS:
                hf[f"{h}{hf_name}.{suffix}"] = ours[f"{b}{ours_name}.{suffix}"]
        hf[h + "input_layernorm.weight"] = ours[b + "norm_1.weight"]
        hf[h + "post_attention_layernorm.weight"] = ours[b + "norm_2.weight"]
    return _contiguous(hf | _head(cfg, ours))


def _from_llama(cfg: ModelConfig, hf: Mapping[str, torch.Tensor]) -> StateDict:
    ours = {"wte.weight": _get(hf, "model.embed_tokens.weight")}
    ours["norm_f.weight"] = _get(hf, "model.norm.weight")
    suffixes = ("weight", "bias") if cfg.components.bias else ("weight",)
    for i in range(cfg.n_layer):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        for suffix in suffixes:
            qkv = [_get(hf, f"{h}self_attn.{p}_proj.{suffix}") for p in "qkv"]
            ours[f"{b}attn.qkv.{suffix}"] = torch.cat(qkv)
            for ours_name, hf_name in _LLAMA_LINEARS:
                ours[f"{b}{ours_name}.{suffix}"] = _get(hf, f"{h}{hf_name}.{suffix}")
        ours[b + "norm_1.weight"] = _get(hf, h + "input_layernorm.weight")
        ours[b + "norm_2.weight"] = _get(hf, h + "post_attention_layernorm.weight")
    if "lm_head.weight" in hf:
        ours["lm_head.weight"] = hf["lm_head.weight"]
    return _contiguous(ours)


def _dtype_name(ours: Mapping[str, torch.Tensor]) -> str:
    return str(ours["wte.weight"].dtype).removeprefix("torch.")


def _gpt2_config(cfg: ModelConfig, ours: Mapping[str, torch.Tensor], eos_token_id: int | None) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": ours["blocks.0.mlp.fc.weight"].size(0),
        "activation_function": "gelu_new",  # GELU's tanh approximation, as our MLP
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_range": cfg.init_std,
        "scale_attn_weights": True,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "use_cache": True,
        "torch_dtype": _dtype_name(ours),
    }


def _llama_config(cfg: ModelConfig, ours: Mapping[str, torch.Tensor], eos_token_id: int | None) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": ours["blocks.0.mlp.up.weight"].size(0),
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        # both spellings: transformers >= 5 reads rope_parameters, older tools (and vLLM) rope_theta
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": cfg.components.bias,
        "mlp_bias": cfg.components.bias,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "use_cache": True,
        "torch_dtype": _dtype_name(ours),
    }


def _gpt2_model_config(hf: Mapping) -> ModelConfig:
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(
            f"HF gpt2 activation_function={hf['activation_function']!r} is not supported; "
            "gptforge's GPT-2 MLP is GELU with the tanh approximation (gelu_new)"
        )
    n_embd = hf.get("n_embd", 768)
    return ModelConfig(
        flavour="gpt2",
        vocab_size=hf.get("vocab_size", 50257),
        block_size=hf.get("n_positions", 1024),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        intermediate_size=hf.get("n_inner") or 4 * n_embd,
        bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        init_std=hf.get("initializer_range", 0.02),
    )


def _llama_model_config(hf: Mapping) -> ModelConfig:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"HF llama rope_type={rope_type!r} is not supported; gptforge has plain RoPE only")
    if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
        raise ConfigError("HF llama with attention_bias != mlp_bias is not supported; model.bias is one flag")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"HF llama hidden_act={hf['hidden_act']!r} is not supported; gptforge uses silu")
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, n_embd // n_head):
        raise ConfigError(
            f"HF llama head_dim={hf['head_dim']} is not hidden_size / num_attention_heads; not supported"
        )
    return ModelConfig(
        flavour="llama",
        vocab_size=hf["vocab_size"],
        block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        n_embd=n_embd,
        intermediate_size=hf["intermediate_size"],
        bias=hf.get("attention_bias", False),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        init_std=hf.get("initializer_range", 0.02),
    )
