"""FSDP2: weights, gradients and optimizer state sharded over ranks, one shard group per transformer block."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from gptforge.config import OptimConfig, StrategyConfig
from gptforge.errors import CheckpointError
from gptforge.trainer.checkpoint.layout import DCP_DIR  # one shard file per rank plus .metadata
from gptforge.trainer.optim import build_optimizer
from gptforge.trainer.strategies.base import StepLayout, apply_activation_checkpointing, clip_and_step_local
from gptforge.trainer.strategies.distributed import DistributedStrategy


class FSDPStrategy(DistributedStrategy):
    """`fully_shard` on every block, then on the root (embeddings, final norm, head)."""

    checkpoint_format = "dcp"  # DCP reshards on load: another world size resumes the model and optimizer
    shards_parameters = True
    steps_whole_matrices = False  # the optimizer sees each rank's DTensor shard of a matrix

    @classmethod
    def model_state_shards(cls, cfg: StrategyConfig, world_size: int) -> tuple[int, int, int]:
        return world_size, world_size, world_size

    def setup(self, model: nn.Module, optim_cfg: OptimConfig, layout: StepLayout) -> None:
        self.layout = layout
        model.to(self.device)
        if self.cfg.activation_checkpointing:
            apply_activation_checkpointing(model)
        if layout.compile:
            for block in model.blocks:
                block.compile()  # per block, as torchtitan does: one compiled graph reused by every layer
        # compute in the autocast dtype, reduce gradients in fp32: bf16 sums over many ranks lose bits
        mixed_precision = MixedPrecisionPolicy(param_dtype=self.autocast_dtype, reduce_dtype=torch.float32)
        shard = {
            "mp_policy": mixed_precision,
            "reshard_after_forward": self.cfg.reshard_after_forward,
            **self.cfg.extra,
        }
        for block in model.blocks:
            fully_shard(block, **shard)
        fully_shard(model, **shard)
        self.model = model
        self.optimizer = build_optimizer(model, optim_cfg, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the mixed-precision policy casts the weights instead

    def forward_backward(
        self, input_ids: torch.Tensor, targets: torch.Tensor, loss_scale: float, sync_grads: bool
    ) -> torch.Tensor:
        # False: gradients stay unsharded and accumulate locally; the last micro-batch reduce-scatters them
        self.model.set_requires_gradient_sync(sync_grads)
        with self.collective("all_gather / reduce_scatter of the FSDP shards (forward/backward)"):
            _, loss = self.model(input_ids, targets)
            (loss * loss_scale).backward()
        return loss.detach()

    def clip_and_step(self, lr: float, skip: bool = False) -> tuple[torch.Tensor, bool]:
        with self.collective("all_reduce of the gradient norm (FSDP)"):
            return clip_and_step_local(self.model, self.optimizer, self.layout.grad_clip, lr, skip)

    def _state(self) -> dict:
        return {
            "model": get_model_state_dict(self.model),
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer),
        }

    def save(self, directory: Path) -> None:
        dcp.save(self._state(), checkpoint_id=directory / DCP_DIR)

    def load(self, directory: Path) -> None:
        # DCP reads each rank's part of every tensor, so a checkpoint loads under another world size too
        state = self._state()
        dcp.load(state, checkpoint_id=directory / DCP_DIR)
        set_model_state_dict(self.model, state["model"])
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])

    def full_model_state_dict(self) -> dict[str, torch.Tensor]:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.model, options=options)

    @classmethod
    def consolidate(cls, directory: Path) -> dict[str, torch.Tensor]:
        path = directory / DCP_DIR
        if not (path / ".metadata").is_file():
            raise CheckpointError(f"{directory} has no {DCP_DIR}/.metadata; strategy=fsdp did not save it")
        metadata = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
        prefix = "model."
        # empty tensors of the saved shapes; DCP fills them from all shards, in this one process
        model_state = {
            key[len(prefix) :]: torch.empty(meta.size, dtype=meta.properties.dtype)
            for key, meta in metadata.items()
            if key.startswith(prefix)
        }
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # one process: meant
            dcp.load({"model": model_state}, checkpoint_id=path, no_dist=True)
        return model_state
