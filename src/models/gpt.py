"""The GPT decoder, built from a ModelConfig's component choices; nothing about devices or ranks."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from gptforge.config import ModelConfig
from gptforge.models.layers import Block, KVCache, build_norm, document_mask, rope_cache, visible_keys

IGNORE_INDEX = -100  # a target the loss skips (prompt tokens in fine-tuning)


class GPT(nn.Module):
    """Token embedding (plus a position table with `position=learned`), `n_layer` blocks, final norm, head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size is not set; resolve it from the tokenizer before building GPT")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.components.position == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = build_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.components.position == "rope":
            # not persistent: derived from the config, so checkpoints carry no copy of them
            cos, sin = rope_cache(cfg.head_dim, cfg.block_size, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, init_std), zero biases, residual projections at init_std / sqrt(2 * n_layer)
        (zero with `model.zero_init_proj`: every block starts as the identity).

        Also ties the head and fills the RoPE tables: a model built on the meta device is whole after
        `to_empty()` and this.
        """
        if self.cfg.tie_embeddings:
            # tied here, not only in __init__: to_empty() gives each module its own copy of a shared weight
            self.lm_head.weight = self.wte.weight
        for name, fill in self.parameter_init():
            fill(self.get_parameter(name))
        self.reset_buffers()

    def parameter_init(self) -> list[tuple[str, Callable[[torch.Tensor], None]]]:
        """(parameter name, the fill that initialises a tensor of its full shape), in the order
        `reset_parameters` draws them from the RNG: replaying the fills in order on tensors of those shapes
        gives the same weights, whatever holds them (a sharded strategy fills one full tensor at a time).

        With tied embeddings `wte.weight` and `lm_head.weight` both appear; the later fill is the one kept.
        """
        residual_std = self.cfg.init_std / math.sqrt(2 * self.cfg.n_layer)
        plan: list[tuple[str, Callable[[torch.Tensor], None]]] = []
        for name, module in self.named_modules():
            prefix = f"{name}." if name else ""
            if isinstance(module, nn.Linear):
                # every module named `proj` writes into the residual stream, once per attention and MLP
                std = residual_std if name.endswith(".proj") else self.cfg.init_std
                if name.endswith(".proj") and self.cfg.zero_init_proj:  # each block starts as the identity
                    plan.append((f"{prefix}weight", nn.init.zeros_))
                else:
                    plan.append((f"{prefix}weight", partial(nn.init.normal_, mean=0.0, std=std)))
                if module.bias is not None:
                    plan.append((f"{prefix}bias", nn.init.zeros_))
            elif isinstance(module, nn.Embedding):
                plan.append((f"{prefix}weight", partial(nn.init.normal_, mean=0.0, std=self.cfg.init_std)))
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                if module.weight is not None:
                    plan.append((f"{prefix}weight", nn.init.ones_))
                if getattr(module, "bias", None) is not None:
                    plan.append((f"{prefix}bias", nn.init.zeros_))
        return plan

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Fill the RoPE tables (derived from the config, never saved)."""
        if self.cfg.components.position == "rope":
            cfg = self.cfg
            cos, sin = rope_cache(cfg.head_dim, cfg.block_size, cfg.rope_theta, device=self.rope_cos.device)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: list[KVCache] | None = None,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab_size) and, given targets (B, T), the mean cross-entropy ignoring -100s.

        With `kv_cache` (from `new_kv_cache`) the input continues the tokens already cached and is added
        to the cache. Rows of different lengths decode together left-padded: `positions` (B, T) is each
        token's position in its own row (default: the cached length onwards, alike for every row) and
        `attention_mask` (B, cached + T) marks the keys that are real tokens; padding is never attended.
        """
        B, T = input_ids.shape[:2]
        start = kv_cache[0].length if kv_cache else 0
        self._check_window(B, T, start, positions, attention_mask)
        # a later pipeline stage (strategies/pipeline.py keeps only its layers) gets hidden states
        x = self.wte(input_ids) if self.wte is not None else input_ids  # (B, T, n_embd)
        rope, uses_rope = None, self.cfg.components.position == "rope"
        if positions is None:
            positions = torch.arange(start, start + T, device=input_ids.device)  # (T,): every row alike
            if uses_rope:
                rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])  # (T, head_dim)
        elif uses_rope:
            # each row its own angles: (B, 1, T, head_dim), broadcast over the heads
            rope = (self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1))
        if self.wpe is not None:
            x = x + self.wpe(positions)
        mask = None if attention_mask is None else visible_keys(attention_mask, start, T)
        if self.cfg.doc_mask and kv_cache is None and attention_mask is None:
            if self.cfg.eos_id is None:
                raise ValueError("model.doc_mask needs model.eos_id; the run plan sets it from the tokenizer")
            mask = document_mask(input_ids, self.cfg.eos_id)  # (B, 1, T, T)
        if self.wte is not None:
            x = self.drop(x)
        for i, block in enumerate(self.blocks.children()):  # a ModuleList, or a pipeline stage's dict
            x = block(x, rope, kv_cache[i] if kv_cache else None, mask)
        if self.lm_head is None:  # an earlier pipeline stage: its output is the next stage's input
            return x, None
        logits = self.lm_head(self.norm_f(x))  # (B, T, vocab_size)
        cap = self.cfg.logit_softcap
        if cap:
            logits = cap * torch.tanh(logits.float() / cap)  # in (-cap, cap): no logit runs away
        return logits, None if targets is None else self.loss(logits, targets)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of `forward`'s logits: mean cross-entropy ignoring -100s (plus z-loss)."""
        # float32 loss: a bf16 log-softmax over a large vocabulary loses precision
        flat_logits = logits.float().view(-1, logits.size(-1))
        flat_targets = targets.reshape(-1)
        loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX)
        if self.cfg.z_loss:
            loss = loss + self._z_loss(flat_logits, flat_targets)
        return loss

    def _z_loss(self, flat_logits: torch.Tensor, flat_targets: torch.Tensor) -> torch.Tensor:
        """`z_loss * mean(logsumexp^2)` over the scored tokens as a term of value zero and that gradient.

        The loss keeps the cross-entropy's value, so train and val loss stay comparable with any run,
        while backward also pulls log Z towards 0 (PaLM's z-loss).
        """
        scored = flat_targets != IGNORE_INDEX
        z = torch.logsumexp(flat_logits[scored], dim=-1).square().mean() * self.cfg.z_loss
        return z - z.detach()

    def _check_window(
        self,
        B: int,
        T: int,
        start: int,
        positions: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> None:
        block_size = self.cfg.block_size
        if positions is None and start + T > block_size:
            raise ValueError(
                f"{start} cached + {T} new tokens exceed model.block_size={block_size}; "
                "crop the input to the last block_size tokens"
            )
        if positions is not None:
            if positions.shape != (B, T):
                raise ValueError(
                    f"positions has shape {tuple(positions.shape)}; it must be (B, T) = {(B, T)}"
                )
            if bool(((positions < 0) | (positions >= block_size)).any()):
                raise ValueError(f"positions must lie in [0, model.block_size={block_size})")
        if attention_mask is not None and attention_mask.shape != (B, start + T):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; it must be "
                f"(B, cached + T) = {(B, start + T)}"
            )

    def new_kv_cache(self) -> list[KVCache]:
        """An empty KV cache, one `KVCache` per block, for incremental decoding with `forward`."""
        return [KVCache() for _ in self.blocks]

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters, tied weights counted once; non-embedding leaves out the token and position tables.

        An untied output head is not an embedding and stays in the non-embedding count.
        """
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.wte.weight.numel()
            if self.wpe is not None:
                total -= self.wpe.weight.numel()
        return total

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token for MFU, PaLM convention: 6 * N + 12 * n_layer * n_head * head_dim * T.

        N is the non-embedding parameter count plus the output head's vocab_size * n_embd (a real matmul,
        tied or not); the second term is attention's scores and weighted sum at context T (default
        block_size).
        """
        cfg = self.cfg
        n = self.num_params(non_embedding=True)
        if cfg.tie_embeddings:
            n += cfg.vocab_size * cfg.n_embd  # untied, the head is already in the non-embedding count
        context = seq_len if seq_len is not None else cfg.block_size
        return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * context
