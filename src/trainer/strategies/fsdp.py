"""FSDP2 over a device mesh: data parallelism that shards weights, gradients and optimizer state (HSDP
with strategy.dp_replicate > 1), optionally with tensor parallelism (strategy.tp) inside each replica
and pipeline stages (strategy.pp) along the model.

The model is built on the meta device and parallelised in torchtitan's order (pipeline split, tensor
parallel, activation checkpointing, compile, fully_shard), then each rank materialises and fills only
its part.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
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
from torch.distributed.fsdp import MixedPrecisionPolicy

from gptforge.config import Config, OptimConfig, StrategyConfig
from gptforge.errors import CheckpointError, ConfigError
from gptforge.trainer.checkpoint.layout import DCP_DIR  # one shard file per rank plus .metadata
from gptforge.trainer.memory import FP32, DataParallelCosts, ModelShapes
from gptforge.trainer.optim import build_optimizer
from gptforge.trainer.strategies.base import StepLayout, apply_activation_checkpointing, clip_and_step_local
from gptforge.trainer.strategies.distributed import DistributedStrategy
from gptforge.trainer.strategies.mesh import MESH_DIMS, MeshShape, build_device_mesh, resolve_mesh
from gptforge.trainer.strategies.parallelize import (
    apply_fsdp,
    apply_tensor_parallel,
    fill_local,
    fuse_state,
    split_fused_qkv,
    split_state,
)
from gptforge.trainer.strategies.pipeline import Pipeline, check_pipeline, keep_stage, stage_layers

# the optimizer's group settings keyed by parameter name (`param_groups.blocks.3.mlp.up.weight.lr`), as its
# state is: keyed by group index, the groups of two pipeline stages would overwrite each other in DCP
FLAT_OPTIMIZER = StateDictOptions(flatten_optimizer_state_dict=True)
# the prefixes wrappers add to parameter names (activation checkpointing, compile): not in checkpoints
WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


class FSDPStrategy(DistributedStrategy):
    """`fully_shard` on every block, then on the root (embeddings, final norm, head), over the mesh's
    data-parallel dimensions; tensor parallelism over its `tp` dimension."""

    checkpoint_format = "dcp"  # DCP reshards on load: another mesh resumes the model and optimizer
    shards_parameters = True
    parallel_dims = frozenset({"dp_replicate", "dp_shard", "tp", "pp"})
    steps_whole_matrices = False  # the optimizer sees each rank's DTensor shard of a matrix
    init_device = "meta"
    autocasts = False  # the mixed-precision policy casts the weights instead

    @classmethod
    def check(cls, cfg: Config) -> None:
        super().check(cfg)
        if cfg.strategy.pp > 1:
            cls.check_pipelined(cfg)
        tp, model = cfg.strategy.tp, cfg.model
        if tp == 1:
            return
        sizes = {
            "model.n_head": model.n_head,
            "model.n_kv_head": model.kv_heads,
            "the MLP hidden size (model.intermediate_size)": model.mlp_hidden_size,
        }
        for key, size in sizes.items():
            if size % tp:
                raise ConfigError(
                    f"strategy.tp={tp} does not divide {key}={size}: each tensor-parallel rank takes whole "
                    f"heads and an equal share of the MLP; choose a tp that divides {size}"
                )
        if model.lora.rank:
            raise ConfigError(
                f"model.lora.rank={model.lora.rank} is not supported with strategy.tp={tp}; "
                "fine-tune LoRA adapters with strategy.tp=1"
            )
        if model.qk_norm:  # its per-head norms would mix tp-local heads with data-parallel DTensors
            raise ConfigError(
                f"model.qk_norm is not supported with strategy.tp={tp} yet; use strategy.tp=1 (FSDP alone "
                "shards it) or model.qk_norm=false"
            )

    @classmethod
    def check_pipelined(cls, cfg: Config) -> None:
        pp = cfg.strategy.pp
        check_pipeline(cfg.model, pp, cfg.strategy.pp_schedule)
        if cfg.trainer.init_from:  # rank 0 would read weights of every stage, and no stage has them all
            raise ConfigError(
                f"trainer.init_from is not supported with strategy.pp={pp} yet; start from it with "
                "strategy.pp=1 (fsdp, tp), or resume a pipelined run's own checkpoint"
            )
        if cfg.eval.tasks:
            raise ConfigError(
                f"eval.tasks is not supported with strategy.pp={pp}: no rank holds the whole model; score "
                "the checkpoint with scripts/evaluate.py"
            )

    @classmethod
    def check_plan(cls, cfg: Config, mesh: MeshShape, grad_accum_steps: int) -> None:
        if mesh.pp > 1:
            check_pipeline(cfg.model, mesh.pp, cfg.strategy.pp_schedule, grad_accum_steps)
        tp = mesh.tp
        if tp > 1 and cfg.model.vocab_size % tp:
            raise ConfigError(
                f"strategy.tp={tp} does not divide model.vocab_size={cfg.model.vocab_size} (embedding and "
                f"head are split by vocabulary rows); set model.vocab_multiple to a multiple of {tp}"
            )
        if tp > 1 and cfg.model.block_size % tp:
            raise ConfigError(
                f"strategy.tp={tp} does not divide model.block_size={cfg.model.block_size} (norms are "
                "sequence-parallel); choose a tp that divides it"
            )

    @classmethod
    def model_state_shards(cls, cfg: StrategyConfig, world_size: int) -> tuple[int, int, int]:
        mesh = resolve_mesh(cfg, world_size)
        split = mesh.dp_shard * mesh.tp * mesh.pp  # replicas (dp_replicate) each hold a whole copy
        return split, split, split

    @classmethod
    def data_parallel_costs(
        cls, cfg: Config, model: ModelShapes, world_size: int, compute_bytes: int, grad_accum_steps: int
    ) -> DataParallelCosts:
        mesh = resolve_mesh(cfg.strategy, world_size)
        split = mesh.tp * mesh.pp  # each rank's stage and tensor-parallel part, before FSDP shards it
        block, root = model.per_block / mesh.tp, model.root / mesh.tp
        # FSDP2 gathers one block at a time and prefetches the next: two blocks' weights in the compute
        # dtype, and a block's unsharded gradient with its flat fp32 copy for the reduce-scatter; the root
        # (embeddings, head) stays gathered from forward to the end of backward, its gradient through backward
        buffers = (2 * block + root) * compute_bytes + block * (compute_bytes + FP32)
        buffers += model.root_trainable / mesh.tp * compute_bytes
        # gradients not synced (all micro-batches but the last) accumulate unsharded, in fp32
        accumulated = model.trainable * FP32 / split if grad_accum_steps > 1 else None
        shard = (mesh.dp_shard - 1) / mesh.dp_shard  # what a rank sends of each gathered or reduced tensor
        gathers = 2 if cfg.strategy.reshard_after_forward else 1  # backward gathers the blocks again
        gathered = (model.total / split * gathers - (gathers - 1) * root) * compute_bytes * shard
        traffic = [
            ("weight all-gathers", grad_accum_steps * gathered),
            ("gradient reduce-scatter", model.trainable / split * FP32 * shard),
        ]
        if mesh.dp_replicate > 1:  # HSDP: each shard's gradient is all-reduced across the replicas
            replicas = (mesh.dp_replicate - 1) / mesh.dp_replicate
            shard_gradient = model.trainable / split / mesh.dp_shard * FP32
            traffic.append(("replica all-reduce", 2 * shard_gradient * replicas))
        return DataParallelCosts(buffers, accumulated, tuple(traffic))

    @classmethod
    def describe(cls, cfg: StrategyConfig) -> str:
        dims = [f"{dim}={getattr(cfg, dim)}" for dim in MESH_DIMS if getattr(cfg, dim) > 1]
        kind = "fsdp (HSDP)" if cfg.dp_replicate > 1 else "fsdp"
        return f"{kind} {' '.join(dims)}".strip()

    def setup(self, model: nn.Module, optim_cfg: OptimConfig, layout: StepLayout) -> None:
        self.layout = layout
        self.mesh = build_device_mesh(self.mesh_shape, self.device.type)
        self.model_cfg = model.cfg
        if self.mesh_shape.pp > 1:  # first: every later step sees this stage's modules only
            stage, pp = self.mesh["pp"].get_local_rank(), self.mesh_shape.pp
            keep_stage(model, stage_layers(model.cfg.n_layer, pp)[stage], stage == 0, stage == pp - 1)
            self.runs_whole_model = False
        split_fused_qkv(model)  # q, k, v apart at every tp, so checkpoints resume under any mesh
        if self.mesh_shape.tp > 1:
            apply_tensor_parallel(model, self.mesh["tp"], self.cfg.loss_parallel)
        if self.cfg.activation_checkpointing:
            apply_activation_checkpointing(model)
        if layout.compile:
            for block in model.blocks.children():
                block.compile()  # per block, as torchtitan does: one compiled graph reused by every layer
        # compute in the autocast dtype, reduce gradients in fp32: bf16 sums over many ranks lose bits
        mixed_precision = MixedPrecisionPolicy(param_dtype=self.autocast_dtype, reduce_dtype=torch.float32)
        dims = ("dp_replicate", "dp_shard") if self.mesh_shape.dp_replicate > 1 else ("dp_shard",)
        apply_fsdp(
            model,
            self.mesh[dims],
            mixed_precision,
            reshard_after_forward=self.cfg.reshard_after_forward,
            **self.cfg.extra,
        )
        model.to_empty(device=self.device)  # uninitialised: load_full_weights fills each rank's part
        model.reset_buffers()
        self.model = model
        self.optimizer = build_optimizer(model, optim_cfg, self.device)
        self.pipeline = None
        if self.mesh_shape.pp > 1:
            self.pipeline = Pipeline(
                model, self.mesh, self.device, self.cfg.pp_schedule, layout.grad_accum_steps
            )

    @torch.no_grad()
    def load_full_weights(self, groups: Iterable[dict[str, torch.Tensor]], from_rank0: bool = False) -> None:
        if from_rank0:
            (state,) = groups
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
            set_model_state_dict(self.model, split_state(state, self.model_cfg), options=options)
            return
        params = {clean_name(n): p for n, p in self.model.named_parameters(remove_duplicate=False)}
        for group in groups:
            for name, tensor in split_state(group, self.model_cfg).items():
                if name in params:
                    fill_local(params[name], tensor.to(params[name].dtype))

    def loss_context(self) -> contextlib.AbstractContextManager:
        if self.cfg.loss_parallel and self.mesh_shape.tp > 1:
            from torch.distributed.tensor.parallel import loss_parallel

            return loss_parallel()
        return contextlib.nullcontext()

    def forward_backward(
        self, input_ids: torch.Tensor, targets: torch.Tensor, loss_scale: float, sync_grads: bool
    ) -> torch.Tensor:
        if self.pipeline is not None:  # it keeps the micro-batches and runs the step on the last
            with self.collective("send / recv between pipeline stages (forward/backward)"):
                return self.pipeline.forward_backward(input_ids, targets, loss_scale, sync_grads)
        # False: gradients stay unsharded and accumulate locally; the last micro-batch reduce-scatters them
        self.model.set_requires_gradient_sync(sync_grads)
        collective = self.collective("all_gather / reduce_scatter of the shards (forward/backward)")
        with collective, self.loss_context():
            _, loss = self.model(input_ids, targets)
            (loss * loss_scale).backward()
        return _local(loss.detach())

    @torch.no_grad()
    def eval_loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.pipeline is not None:
            with self.collective("send / recv between pipeline stages (evaluation)"):
                return self.pipeline.eval_loss(input_ids, targets)
        with self.loss_context():
            _, loss = self.model(input_ids, targets)
        return _local(loss.detach())

    def clip_and_step(self, lr: float, skip: bool = False) -> tuple[torch.Tensor, bool]:
        with self.collective("all_reduce of the gradient norm (FSDP)"):
            combine = self.pipeline.combine_norm if self.pipeline is not None else None
            return clip_and_step_local(self.model, self.optimizer, self.layout.grad_clip, lr, skip, combine)

    def _state(self, options: StateDictOptions) -> dict:
        return {
            "model": get_model_state_dict(self.model),
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=options),
        }

    def save(self, directory: Path) -> None:
        dcp.save(self._state(FLAT_OPTIMIZER), checkpoint_id=directory / DCP_DIR)

    def load(self, directory: Path) -> None:
        # DCP reads each rank's part of every tensor, so a checkpoint loads under another mesh too
        path = directory / DCP_DIR
        saved_keys = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
        # checkpoints written before pipeline stages keyed the optimizer's groups by their index
        options = StateDictOptions() if "optimizer.param_groups.0.lr" in saved_keys else FLAT_OPTIMIZER
        state = self._state(options)
        dcp.load(state, checkpoint_id=path)
        set_model_state_dict(self.model, state["model"])
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=options)

    def full_model_state_dict(self) -> dict[str, torch.Tensor]:
        if self.pipeline is not None:  # each stage's weights, gathered whole, then the stages' on rank 0
            stage = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
            return fuse_state(self.pipeline.gather_stages({k: v.cpu() for k, v in stage.items()}))
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return fuse_state(get_model_state_dict(self.model, options=options))

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
        return fuse_state(model_state)


def _local(loss: torch.Tensor) -> torch.Tensor:
    """A loss the loop can add up: loss parallel returns a replicated DTensor."""
    return loss.full_tensor() if hasattr(loss, "full_tensor") else loss
