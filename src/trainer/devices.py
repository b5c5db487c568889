"""Which device a process trains on and in which precision: shared by the strategies, the scripts that
load a checkpoint for inference (generate, evaluate, serve) and the benchmarks."""

from __future__ import annotations

import contextlib
import os

import torch

from gptforge.errors import ConfigError, LaunchError


def local_world_size() -> int:
    """Processes on this node: torchrun sets LOCAL_WORLD_SIZE, the DeepSpeed launcher LOCAL_SIZE."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)


def resolve_device(name: str, local_rank: int = 0, procs_per_node: int = 1) -> torch.device:
    """`auto` is CUDA when present, else CPU; a CUDA run uses the device of this process's local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible == 0:
            if procs_per_node == 1:
                raise ConfigError(
                    "trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu"
                )
            raise LaunchError(
                f"NPROC={procs_per_node} processes per node with trainer.device=cuda, but no CUDA device "
                "is visible; use trainer.device=auto or cpu (gloo) on this machine"
            )
        if procs_per_node > visible:
            raise LaunchError(
                f"NPROC={procs_per_node} processes per node but {visible} CUDA device(s) visible; "
                f"set NPROC<={visible} (one process per GPU) or trainer.device=cpu"
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32. `auto` is bf16 on CUDA devices that support it."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if name == "fp8":  # the big linears in float8 (converted at build), everything else autocast to bf16
        from gptforge.trainer.fp8 import check_fp8

        check_fp8(device)
        return torch.bfloat16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[name]


def precision_name(dtype: torch.dtype | None) -> str:
    """How the summary and metrics name an autocast dtype (None: fp32)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device` (from `resolve_precision`); None runs in full fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
