"""A model's random initialisation as full tensors, a few at a time, for strategies that build on the meta
device: each rank replays the single-process build's draws and keeps only its part of each tensor.

The guarantee: for the same seed, a meta build's initial weights equal, bit for bit, those of `GPT(cfg)`
built whole in one process on the CPU, whatever the mesh. Every rank draws every tensor from the same
CPU generator in `reset_parameters`' order (one top-level module or block at a time, so at most one
block's full tensors exist at once, never the whole model); the price is that each rank spends the CPU
time of drawing the whole model once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

Fill = Callable[[torch.Tensor], None]


def _owner(name: str) -> str:
    """What a parameter is drawn with: its block (`blocks.3`) or top-level module (`wte`)."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]


def full_tensor_groups(model: nn.Module, fills: list[tuple[str, Fill]]) -> Iterator[dict[str, torch.Tensor]]:
    """Full fp32 CPU tensors of `fills` (name -> fill, in draw order) of `model`'s parameters, one block
    or top-level module per group, drawn from the global RNG as they are consumed. Shapes are read from
    `model` now (meta or not), so the strategy may reshape it before the groups are drawn."""
    shapes = {name: p.shape for name, p in model.named_parameters(remove_duplicate=False)}
    return _draw(shapes, fills)


def _draw(shapes: dict[str, torch.Size], fills: list[tuple[str, Fill]]) -> Iterator[dict[str, torch.Tensor]]:
    group: dict[str, torch.Tensor] = {}
    current = None
    for name, fill in fills:
        if group and _owner(name) != current:
            yield group
            group = {}
        current = _owner(name)
        tensor = torch.empty(shapes[name], dtype=torch.float32, device="cpu")
        fill(tensor)
        group[name] = tensor
    if group:
        yield group
