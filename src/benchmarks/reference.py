"""The yardstick: a plain PyTorch GPT and loop in the style of nanoGPT's model.py and train.py, run on the
hyperparameters of a composed config (`scripts/benchmark.py train --compare reference ...`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gptforge.compose import compose
from gptforge.config import Config


@dataclass
class ReferenceConfig:
    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float
    bias: bool
    tie_embeddings: bool


class ReferenceLayerNorm(nn.Module):
    """LayerNorm with an optional bias, as nanoGPT writes it."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class ReferenceAttention(nn.Module):
    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class ReferenceMLP(nn.Module):
    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class ReferenceBlock(nn.Module):
    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        self.ln_1 = ReferenceLayerNorm(cfg.n_embd, cfg.bias)
        self.attn = ReferenceAttention(cfg)
        self.ln_2 = ReferenceLayerNorm(cfg.n_embd, cfg.bias)
        self.mlp = ReferenceMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ReferenceGPT(nn.Module):
    """nanoGPT's GPT: learned positions, pre-norm blocks, forward returns (logits, loss)."""

    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(cfg.vocab_size, cfg.n_embd),
                "wpe": nn.Embedding(cfg.block_size, cfg.n_embd),
                "drop": nn.Dropout(cfg.dropout),
                "h": nn.ModuleList(ReferenceBlock(cfg) for _ in range(cfg.n_layer)),
                "ln_f": ReferenceLayerNorm(cfg.n_embd, cfg.bias),
            }
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.optim.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        extra = {"fused": True} if device.type == "cuda" else {}  # nanoGPT: fused only on CUDA
        return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), **extra)

    def flops_per_token(self) -> int:
        """The trainer's convention: 6 * (non-embedding params + output head) + 12 * L * C * T."""
        cfg = self.cfg
        n = sum(p.numel() for p in self.parameters()) - self.transformer.wpe.weight.numel()
        if not cfg.tie_embeddings:
            n -= self.transformer.wte.weight.numel()
        return 6 * n + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


class ReferenceRunner:
    """nanoGPT's train.py loop on the hyperparameters of the composed config (model, batch, AdamW, lr)."""

    log_interval = 10  # nanoGPT's shakespeare_char config: loss.item() every 10 iterations

    def __init__(self, overrides: list[str], synthetic: bool) -> None:
        from gptforge.data.corpus import read_text
        from gptforge.trainer.devices import resolve_device, resolve_precision
        from gptforge.trainer.metrics import peak_flops_per_sec

        cfg = compose(overrides)
        parts = cfg.model.components
        gpt2_components = (parts.norm, parts.mlp, parts.position) == ("layernorm", "gelu", "learned")
        if cfg.data.source != "text_file" or cfg.tokenizer.name != "char" or not gpt2_components:
            raise SystemExit(
                "error: reference runs gpt2-flavour models on data=shakespeare_char (char tokens)"
            )
        if cfg.trainer.threads:
            torch.set_num_threads(cfg.trainer.threads)
        self.cfg = cfg
        self.device = resolve_device(cfg.trainer.device)
        text = read_text(cfg.data.path)
        chars = sorted(set(text))
        stoi = {ch: i for i, ch in enumerate(chars)}
        split = int(len(text) * (1.0 - cfg.data.val_fraction))
        self.train_data = np.array([stoi[c] for c in text[:split]], dtype=np.uint16)
        # random ids over the model's configured vocabulary, as the trainer's synthetic batches draw them:
        # the head is the same size in both, so a --data synthetic ratio compares like with like
        self.vocab_size = cfg.model.vocab_size if synthetic and cfg.model.vocab_size else len(chars)
        self.synthetic = synthetic
        self.batch_size, self.block_size = cfg.trainer.micro_batch_size, cfg.model.block_size
        model_cfg = ReferenceConfig(
            block_size=cfg.model.block_size,
            vocab_size=self.vocab_size,
            n_layer=cfg.model.n_layer,
            n_head=cfg.model.n_head,
            n_embd=cfg.model.n_embd,
            dropout=cfg.model.dropout,
            bias=cfg.model.components.bias,
            tie_embeddings=cfg.model.tie_embeddings,
        )
        torch.manual_seed(cfg.seed)
        self.model = ReferenceGPT(model_cfg).to(self.device)
        self.optimizer = self.model.configure_optimizers(cfg, self.device)
        self.train_model = torch.compile(self.model) if cfg.trainer.compile else self.model
        dtype = resolve_precision(cfg.trainer.precision, self.device)
        self.precision = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]
        # nanoGPT autocasts on CUDA only; with fp16 it would also need a GradScaler
        self.autocast = (
            torch.autocast(self.device.type, dtype=dtype) if dtype and self.device.type == "cuda" else None
        )
        self.is_main, self.world_size = True, 1
        self.tokens_per_step = self.batch_size * self.block_size
        self.flops_per_token = self.model.flops_per_token()
        self.peak_flops_per_sec = peak_flops_per_sec(self.device, cfg.trainer.peak_flops_per_sec)
        self.iter_num = 0
        self.last_loss: float | None = None
        self.x, self.y = self.get_batch()

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.synthetic:
            x = torch.randint(0, self.vocab_size, (self.batch_size, self.block_size))
            y = torch.roll(x, -1, dims=1)
        else:
            data, T = self.train_data, self.block_size
            ix = torch.randint(len(data) - T, (self.batch_size,))
            x = torch.stack([torch.from_numpy(data[i : i + T].astype(np.int64)) for i in ix])
            y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + T].astype(np.int64)) for i in ix])
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(
                self.device, non_blocking=True
            )
        return x, y

    def get_lr(self, it: int) -> float:
        cfg = self.cfg
        warmup, decay_iters, lr, min_lr = (
            cfg.scheduler.warmup_steps,
            cfg.trainer.max_steps,
            cfg.optim.lr,
            cfg.scheduler.min_lr_ratio * cfg.optim.lr,
        )
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > decay_iters:
            return min_lr
        coeff = 0.5 * (1.0 + math.cos(math.pi * (it - warmup) / (decay_iters - warmup)))
        return min_lr + coeff * (lr - min_lr)

    def step(self) -> None:
        lr = self.get_lr(self.iter_num)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.autocast is None:
            _, loss = self.train_model(self.x, self.y)
        else:
            with self.autocast:
                _, loss = self.train_model(self.x, self.y)
        self.x, self.y = self.get_batch()  # the next batch, while the GPU works on this one
        loss.backward()
        if self.cfg.trainer.grad_clip != 0.0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.trainer.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.iter_num % self.log_interval == 0:
            self.last_loss = loss.item()
        self.iter_num += 1

    def close(self) -> None:
        return None
