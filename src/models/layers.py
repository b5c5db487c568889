"""The parts of a GPT block: norms, rotary embeddings, causal self-attention with a KV cache, MLPs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gptforge.config import ModelConfig


def build_norm(cfg: ModelConfig) -> nn.Module:
    """`model.norm`: LayerNorm (with a bias per `model.bias`) or RMSNorm, over n_embd."""
    return NORMS[cfg.components.norm](cfg)


NORMS = {
    "layernorm": lambda cfg: nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.components.bias),
    "rmsnorm": lambda cfg: nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps),
}


def rope_cache(
    head_dim: int, max_len: int, theta: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (max_len, head_dim), halves repeated as Hugging Face Llama lays them out."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    positions = torch.arange(max_len, device=device, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)  # (max_len, head_dim / 2)
    angles = torch.cat([freqs, freqs], dim=-1)  # (max_len, head_dim)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, n_head, T, head_dim) by position: rotate_half over non-interleaved halves (HF Llama)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Keys and values of the tokens seen so far, for one layer: (B, n_kv_head, T_past, head_dim) each."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.size(2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new tokens' keys and values; returns those of every token so far."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def expand(self, batch: int) -> None:
        """Share the cached tokens of one row among `batch` rows (candidates continuing one context)."""
        self.k, self.v = self.k.expand(batch, -1, -1, -1), self.v.expand(batch, -1, -1, -1)  # views, no copy


def visible_keys(attention_mask: torch.Tensor, past: int, T: int) -> torch.Tensor:
    """Which keys each new token attends to, (B, 1, T, past + T), from the real keys (B, past + T).

    Causal, padding left out; a padding token sees itself, so that its row of scores is never all -inf
    (NaN there would reach the real tokens through 0 * NaN).
    """
    query_pos = torch.arange(past, past + T, device=attention_mask.device).unsqueeze(1)  # (T, 1)
    key_pos = torch.arange(past + T, device=attention_mask.device)  # (past + T,)
    causal = key_pos <= query_pos  # (T, past + T)
    return (causal & attention_mask[:, None, None, :].bool()) | (key_pos == query_pos)


def document_mask(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Which keys each token attends to, (B, 1, T, T): causal and within its own document.

    A document ends with its EOS token (the EOS still sees its own document), so packed documents never
    see each other; the block's first document may have begun in the previous block.
    """
    is_eos = (input_ids == eos_id).int()
    doc = torch.cumsum(is_eos, dim=1) - is_eos  # (B, T): EOS tokens strictly before each token
    T = input_ids.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
    return (causal & (doc[:, :, None] == doc[:, None, :])).unsqueeze(1)


class CausalSelfAttention(nn.Module):
    """Multi-head or grouped-query causal attention; q, k and v come from one fused projection."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        # rows [q; k; v]: a transpose gives HF GPT-2's c_attn, a split gives HF Llama's q/k/v_proj
        bias = cfg.components.bias
        self.qkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=bias)
        self.proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=bias)
        self.dropout_p = cfg.dropout
        # model.qk_norm: unit-RMS queries and keys per head bound the attention scores (modded-nanogpt)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`mask` (B, 1, T, past + T) from `visible_keys` replaces the plain causal mask when given."""
        B, T, _ = x.size()
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        q, k, v = self.qkv(x).split([q_dim, kv_dim, kv_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, T, head_dim)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv_head, T, head_dim)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)  # (B, n_kv_head, past + T, head_dim)
        if self.n_kv_head != self.n_head:
            # key/value head j serves query heads j * group .. (j + 1) * group - 1, as HF's repeat_kv;
            # repeated by hand because SDPA's enable_gqa needs torch >= 2.5
            group = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        is_causal = False
        if mask is None:
            is_causal = past == 0 and T > 1
            if past and T > 1:
                # new tokens see every cached token, and the new ones up to themselves
                mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout_p if self.training else 0.0,
            is_causal=is_causal,
        )  # (B, n_head, T, head_dim)
        y = y.transpose(1, 2).contiguous().view(B, T, q_dim)
        return self.proj(y)


class MLP(nn.Module):
    """GPT-2's feed-forward: Linear, GELU (tanh approximation, as GPT-2), Linear."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden, bias = cfg.mlp_hidden_size, cfg.components.bias
        self.fc = nn.Linear(cfg.n_embd, hidden, bias=bias)
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class ReLU2(MLP):
    """The feed-forward of modded-nanogpt (from Primer): Linear, ReLU squared, Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.fc(x)).square())


class SwiGLU(nn.Module):
    """Llama's gated feed-forward: proj(silu(gate(x)) * up(x)); hidden defaults to 8/3 * n_embd."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden, bias = cfg.mlp_hidden_size, cfg.components.bias
        self.gate = nn.Linear(cfg.n_embd, hidden, bias=bias)
        self.up = nn.Linear(cfg.n_embd, hidden, bias=bias)
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.silu(self.gate(x)) * self.up(x))


# model.mlp: the class each name builds (its linear layers' names are what HF conversion and LoRA see)
MLPS: dict[str, type[nn.Module]] = {"gelu": MLP, "swiglu": SwiGLU, "relu2": ReLU2}


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm_1 = build_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.norm_2 = build_norm(cfg)
        self.mlp = MLPS[cfg.components.mlp](cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm_1(x), rope, cache, mask))
        return x + self.dropout(self.mlp(self.norm_2(x)))
