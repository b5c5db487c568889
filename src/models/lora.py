"""LoRA: low-rank adapters put on a GPT's linear layers from outside, trained alone, merged back for export.

A `LoRALinear` is an `nn.Linear` that keeps its `weight` and `bias` under their own names and adds
`lora_a` (rank, in) and `lora_b` (out, rank): a model's state-dict keys stay what they were, plus the
adapters' own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gptforge.config import LoraConfig
from gptforge.errors import CheckpointError, ConfigError

LORA_KEYS = ("lora_a", "lora_b")


class LoRALinear(nn.Linear):
    """y = x W^T + b + (alpha / rank) * dropout(x) A^T B^T; W and b frozen, A and B trained."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: nothing is copied
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        # B starts at zero so the adapted model starts as the base model
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        init_lora_a(self.lora_a)
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_a), self.lora_b)  # (..., out_features)
        return F.linear(x, self.weight, self.bias) + self.scaling * update

    def merged(self) -> nn.Linear:
        """A plain nn.Linear whose weight holds W + (alpha / rank) B A."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.scaling * (self.lora_b @ self.lora_a))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.lora_a.size(0)}, scaling={self.scaling:g}"


def init_lora_a(tensor: torch.Tensor) -> None:
    """A's initialisation (B's is zeros): nn.Linear's default, as in the LoRA paper's code."""
    nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))


def lora_parameter_init(model: nn.Module) -> list[tuple[str, Callable[[torch.Tensor], None]]]:
    """(adapter parameter name, its fill), in the order `apply_lora` draws them from the RNG."""
    plan: list[tuple[str, Callable[[torch.Tensor], None]]] = []
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            plan += [(f"{name}.lora_a", init_lora_a), (f"{name}.lora_b", nn.init.zeros_)]
    return plan


def _targeted(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Wrap the target linear layers of `model` in LoRALinear and freeze every other parameter.

    Returns the wrapped module names. Call it after loading the base weights and before building the
    optimizer; rank 0 changes nothing.
    """
    if cfg.rank == 0:
        return []
    linears = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    if cfg.rank > min(min(m.in_features, m.out_features) for _, m in linears):
        raise ConfigError(f"model.lora.rank={cfg.rank} is larger than a targeted layer's smaller side")
    chosen = [(n, m) for n, m in linears if _targeted(n, list(cfg.target_modules))]
    unmatched = [t for t in cfg.target_modules if not any(_targeted(n, [t]) for n, _ in linears)]
    if unmatched:
        names = sorted({n.split(".", 2)[-1] for n, _ in linears})
        raise ConfigError(
            f"model.lora.target_modules: {unmatched} match no linear layer; valid names: {', '.join(names)}"
        )
    for param in model.parameters():
        param.requires_grad_(False)
    for name, linear in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(linear, cfg.rank, cfg.alpha, cfg.dropout))
    return [name for name, _ in chosen]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, in place: the same function as a plain, trainable model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.merged())
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def lora_state_dict(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapters alone (`...lora_a`, `...lora_b`), detached on the CPU, for a separate adapter file.

    Takes the model, or a full state dict (a sharded strategy's `full_model_state_dict()`).
    """
    if isinstance(model_or_state, nn.Module):
        model_or_state = dict(model_or_state.named_parameters())
    return {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in model_or_state.items()
        if name.rsplit(".", 1)[-1] in LORA_KEYS
    }


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy adapters from `lora_state_dict` into a model already wrapped by `apply_lora` with its config."""
    own = {name: p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] in LORA_KEYS}
    if own.keys() != state.keys():
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        raise CheckpointError(
            f"LoRA adapters do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}; "
            "use the model.lora config they were trained with"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)
