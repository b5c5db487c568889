"""The optimizers: AdamW with weight decay only on linear matrices, or Muon for the hidden matrices with
AdamW for the rest (`optim.name=muon`), stepped and saved as one object."""

from __future__ import annotations

import torch
from torch import nn

from gptforge.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float, exclude: set[int] | None = None) -> list[dict]:
    """Two groups: linear weights decay; norms, biases and embeddings do not (decaying them hurts).

    Parameters whose id is in `exclude` (those another optimizer steps) are left out.
    """
    embedding_params = {
        id(p) for module in model.modules() if isinstance(module, nn.Embedding) for p in module.parameters()
    }
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad or id(param) in (exclude or ()):
            continue
        if param.dim() >= 2 and id(param) not in embedding_params:
            decay.append(param)
        else:
            no_decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights inside the transformer blocks: what Muon orthogonalises. Embeddings, the head,
    norms and biases are not among them (Muon is for hidden layers; modded-nanogpt, Keller Jordan)."""
    return [p for p in model.blocks.parameters() if p.requires_grad and p.dim() == 2]


class MuonAdamW:
    """Muon over the hidden matrices and AdamW over everything else, as one optimizer for the strategies.

    `param_groups` lists both optimizers' groups (the Muon group's lr is `lr_scale` times the schedule's,
    see `set_lr`); `state_dict` holds both states, so checkpoints and bit-exact resume work as for AdamW.
    """

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:
        return [*self.muon.param_groups, *self.adamw.param_groups]

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"muon", "adamw"}:
            raise ValueError(
                f"optimizer state has keys {sorted(state)}; optim.name=muon saves muon and adamw"
            )
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def fused_adamw(cfg: OptimConfig, device: torch.device) -> bool:
    """Whether AdamW runs its fused kernel: `optim.fused`, by default on CUDA."""
    return cfg.fused if cfg.fused is not None else device.type == "cuda"


def adamw_kernel(cfg: OptimConfig, device: torch.device) -> str:
    """How AdamW steps on `device`: `fused`, `foreach` (torch's default on CUDA without fused) or `for-loop`
    (one tensor at a time: torch's choice on the CPU, which has no foreach kernels)."""
    if fused_adamw(cfg, device):
        return "fused"
    return "foreach" if device.type == "cuda" else "for-loop"


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, device: torch.device
) -> torch.optim.Optimizer | MuonAdamW:
    """AdamW over `param_groups` (the fused kernel on CUDA unless `cfg.fused` says otherwise), or with
    `cfg.name=muon`, Muon for `hidden_matrices` and that AdamW for the rest."""
    fused = fused_adamw(cfg, device)
    muon_params = hidden_matrices(model) if cfg.name == "muon" else []
    adamw = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay, exclude={id(p) for p in muon_params}),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        fused=fused,
    )
    if cfg.name != "muon":
        return adamw
    muon = torch.optim.Muon(
        [{"params": muon_params, "lr_scale": cfg.muon_lr / cfg.lr}],
        lr=cfg.muon_lr,
        momentum=cfg.muon_momentum,
        weight_decay=cfg.muon_weight_decay,
        nesterov=True,
    )
    return MuonAdamW(muon, adamw)


def set_lr(optimizer: torch.optim.Optimizer | MuonAdamW, lr: float) -> None:
    """The schedule's `lr` on every group, times the group's `lr_scale` (Muon's own peak: optim.muon_lr)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
