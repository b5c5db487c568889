"""fp8 training (`trainer.precision=fp8`): torchao's float8 linears, bf16 autocast for everything else.

The big linear layers' matmuls run in float8 with dynamic tensorwise scaling (torchao's default recipe, as
torchtitan and OLMo-core use it); the embedding, the LM head and layers too small to gain (or whose sizes
the float8 kernels cannot take) stay in bf16. The conversion happens on the built model, before compile and
before any strategy wraps or shards it. It needs a GPU that has float8 tensor cores (compute capability
8.9+: Ada, Hopper and newer) and the torchao package (`pip install 'gptforge[fp8]'`); anywhere else the run
is refused in one line before it starts.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from gptforge.errors import ConfigError

MIN_FEATURES = 1024  # smaller matmuls lose more to the scaling than float8 gains (torchtitan's rule of thumb)
SKIPPED = ("lm_head",)  # the head's logits feed the loss: kept in bf16


def check_fp8(device: torch.device) -> None:
    """ConfigError unless this device and environment can train in fp8."""
    if device.type != "cuda":
        raise ConfigError(
            "trainer.precision=fp8 needs a CUDA GPU with float8 tensor cores (compute capability 8.9+: Ada, "
            f"Hopper or newer), not {device.type}; use bf16 or fp32 here"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise ConfigError(
            f"trainer.precision=fp8 needs compute capability 8.9+ (Ada, Hopper or newer); {name} has "
            f"{capability[0]}.{capability[1]}: use trainer.precision=bf16"
        )
    if importlib.util.find_spec("torchao") is None:
        raise ConfigError("trainer.precision=fp8 needs torchao: pip install 'gptforge[fp8]' (or torchao)")


def converts(module: nn.Module, fqn: str) -> bool:
    """Whether the linear at `fqn` trains in float8: big enough, sizes the kernels take, not the head."""
    if not isinstance(module, nn.Linear) or fqn.split(".")[-1] in SKIPPED:
        return False
    sizes = (module.in_features, module.out_features)
    return min(sizes) >= MIN_FEATURES and all(size % 16 == 0 for size in sizes)


def convert_to_fp8(model: nn.Module) -> int:
    """Swap the model's eligible linears for torchao's Float8Linear in place; returns how many."""
    from torchao.float8 import convert_to_float8_training

    convert_to_float8_training(model, module_filter_fn=converts)
    return sum(type(m).__name__ == "Float8Linear" for m in model.modules())
