"""What every multi-process strategy shares: the process group, metric all-reduce, barrier, teardown."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from gptforge.config import StrategyConfig
from gptforge.errors import LaunchError
from gptforge.trainer.strategies.base import Strategy


def process_group_backend(requested: str, device: torch.device) -> str:
    """`auto` is NCCL on CUDA and gloo on CPU; NCCL without a GPU is refused by name."""
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise LaunchError("strategy.backend=nccl needs CUDA devices; use gloo or auto on CPU")
    return requested


def default_to_world_of_one() -> None:
    """Without a launcher (plain `python`), the rank environment of a one-process world on a free port."""
    if "RANK" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    for key, value in {**defaults, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(key, value)


class DistributedStrategy(Strategy):
    """A strategy whose ranks talk through torch.distributed; works with world size 1 as well."""

    def __init__(self, cfg: StrategyConfig, device: str = "auto", precision: str = "auto") -> None:
        default_to_world_of_one()  # so `python scripts/train.py strategy=fsdp` runs the same code as torchrun
        super().__init__(cfg, device=device, precision=precision)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.backend = process_group_backend(cfg.backend, self.device)
        if not dist.is_initialized():
            self.init_process_group(timedelta(seconds=cfg.timeout_s))

    def init_process_group(self, timeout: timedelta) -> None:
        dist.init_process_group(
            self.backend,
            timeout=timeout,
            device_id=self.device if self.device.type == "cuda" else None,
        )

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor / self.world_size

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_flag(self, flag: bool) -> bool:
        value = torch.tensor(float(flag), device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def teardown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
