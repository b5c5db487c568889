"""Tensor parallelism, activation checkpointing, compile and FSDP2 applied to a GPT over a device mesh,
in torchtitan's order, and each rank's part of full tensors (initialisation, init_from) filled in.

The model knows nothing of this: the plan below names its modules (`blocks.<i>.attn.qkv`, `mlp.fc`, ...).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from gptforge.config import ModelConfig

SPLIT_PARTS = ("q", "k", "v")


class SplitQKV(nn.Module):
    """The fused q/k/v projection as three linear layers, so tensor parallelism can give each rank whole
    heads of each (a contiguous split of the fused rows would hand rank 0 all of q). Its output is the
    fused layer's: [q; k; v] along the last dimension, of this rank's heads."""

    def __init__(self, fused: nn.Linear, sizes: tuple[int, int, int]) -> None:
        super().__init__()
        bias, factory = fused.bias is not None, {"device": fused.weight.device, "dtype": fused.weight.dtype}
        self.q, self.k, self.v = (nn.Linear(fused.in_features, size, bias=bias, **factory) for size in sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def qkv_sizes(cfg: ModelConfig) -> tuple[int, int, int]:
    """Rows of q, k and v in the fused projection."""
    return cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim


def split_fused_qkv(model: nn.Module) -> None:
    """Replace every block's plain `attn.qkv` by a SplitQKV (LoRA-wrapped layers stay fused)."""
    for block in model.blocks.children():
        if type(block.attn.qkv) is nn.Linear:
            block.attn.qkv = SplitQKV(block.attn.qkv, qkv_sizes(model.cfg))


def split_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """`state` with fused `attn.qkv.<leaf>` tensors (what every checkpoint and file holds) split into the
    keys of a model with SplitQKV; other keys pass unchanged."""
    out = {}
    for key, tensor in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix.endswith("attn.qkv"):
            for part, piece in zip(SPLIT_PARTS, tensor.split(qkv_sizes(cfg)), strict=True):
                out[f"{prefix}.{part}.{leaf}"] = piece
        else:
            out[key] = tensor
    return out


def fuse_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `split_state`: q/k/v keys joined back into `attn.qkv.<leaf>`."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        prefix, _, leaf = key.rpartition(".")
        owner, _, part = prefix.rpartition(".")
        if part in SPLIT_PARTS and owner.endswith("attn.qkv"):
            if part == "q":
                out[f"{owner}.{leaf}"] = torch.cat([state[f"{owner}.{p}.{leaf}"] for p in SPLIT_PARTS])
        else:
            out[key] = tensor
    return out


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh, loss_parallel: bool) -> None:
    """Megatron-style: q/k/v, fc, gate, up split by columns (output features), the projections after them
    by rows, so each block needs one all-gather and one reduce-scatter per sublayer; norms and the residual
    stream are split along the sequence (sequence parallelism); embeddings by rows of the vocabulary."""
    tp = tp_mesh.size()
    position = {}
    if model.wpe is not None:  # looked up by positions (T,): their sequence dimension is 0
        position["wpe"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(0))
    parallelize_module(
        model,
        tp_mesh,
        {
            "wte": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
            **position,
            "norm_f": SequenceParallel(),
            # loss parallel: logits stay split over the vocabulary; the loss never gathers them
            "lm_head": ColwiseParallel(
                input_layouts=Shard(1),
                output_layouts=Shard(-1) if loss_parallel else Replicate(),
                use_local_output=not loss_parallel,
            ),
        },
    )
    if model.cfg.tie_embeddings:  # both are split by vocabulary rows: one parameter serves both again
        model.lm_head.weight = model.wte.weight
    gather_input = PrepareModuleInput(
        input_layouts=(Shard(1), None, None, None),
        desired_input_layouts=(Replicate(), None, None, None),
        use_local_output=True,
    )
    for block in model.blocks.children():
        mlp_in = ["fc"] if hasattr(block.mlp, "fc") else ["gate", "up"]
        plan = {
            "norm_1": SequenceParallel(),
            "attn": gather_input,
            **{f"attn.qkv.{part}": ColwiseParallel() for part in SPLIT_PARTS},
            "attn.proj": RowwiseParallel(output_layouts=Shard(1)),
            "norm_2": SequenceParallel(),
            "mlp": PrepareModuleInput(
                input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_output=True
            ),
            **{f"mlp.{name}": ColwiseParallel() for name in mlp_in},
            "mlp.proj": RowwiseParallel(output_layouts=Shard(1)),
        }
        parallelize_module(block, tp_mesh, plan)
        # each rank computes its own heads: the attention's views use the local head counts
        block.attn.n_head //= tp
        block.attn.n_kv_head //= tp
    # a pipeline stage hands on the whole sequence, so a later stage sees the run's positions (RoPE):
    # gathered after its last block, split again before the next stage's first
    blocks = list(model.blocks.children())
    if model.wte is None:
        parallelize_module(
            blocks[0],
            tp_mesh,
            PrepareModuleInput(
                input_layouts=(Replicate(), None, None, None),
                desired_input_layouts=(Shard(1), None, None, None),
                use_local_output=True,
            ),
        )
    if model.lm_head is None:
        parallelize_module(
            blocks[-1],
            tp_mesh,
            PrepareModuleOutput(
                output_layouts=Shard(1), desired_output_layouts=Replicate(), use_local_output=True
            ),
        )


def apply_fsdp(
    model: nn.Module, dp_mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy, **shard: object
) -> None:
    """`fully_shard` on every block, then on the root (embeddings, final norm, head); a 2-D `dp_mesh`
    (dp_replicate, dp_shard) is HSDP: shards within a group, replicas across groups."""
    blocks = model.blocks.children()
    for block in blocks:
        fully_shard(block, mesh=dp_mesh, mp_policy=mp_policy, **shard)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp_policy, **shard)


@torch.no_grad()
def fill_local(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy this rank's part of the full tensor `full` into `param` (a DTensor shard or a plain tensor);
    no communication: every rank holds the same `full`."""
    if not isinstance(param, DTensor):
        param.copy_(full)
        return
    # the same slicing DCP uses to save a DTensor: it knows FSDP's and TP's placements, strided ones too
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(full.shape, param.device_mesh, param.placements)
    local = full[tuple(slice(o, o + n) for n, o in zip(shape, offset, strict=True))]
    param.to_local().copy_(local)
