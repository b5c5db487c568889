"""The one interface the training loop uses to run a step, whatever the backend."""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from gptforge.config import Config, OptimConfig, StrategyConfig, TrainerConfig
from gptforge.errors import ConfigError
from gptforge.trainer.devices import (
    autocast_context,
    local_world_size,
    precision_name,
    resolve_device,
    resolve_precision,
)
from gptforge.trainer.memory import DataParallelCosts, ModelShapes
from gptforge.trainer.strategies.mesh import MeshShape, resolve_mesh


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Wrap every transformer block so its activations are recomputed in backward instead of stored."""
    # torchtitan's choice; the wrapper strips its own prefix from state-dict keys, so checkpoints match
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for name, block in list(model.blocks.named_children()):  # a ModuleList, or a pipeline stage's dict
        setattr(model.blocks, name, checkpoint_wrapper(block))


@dataclass(frozen=True)
class StepLayout:
    """What a backend needs to know of an optimizer step: DeepSpeed builds its engine config from it."""

    micro_batch_size: int  # sequences per forward on this rank
    grad_accum_steps: int  # micro-batches per optimizer step
    grad_clip: float  # max global gradient norm; 0: no clipping
    compile: bool = False  # torch.compile the model


def clip_and_step_local(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    max_norm: float,
    lr: float,
    skip: bool,
    combine_norm: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, bool]:
    """`Strategy.clip_and_step` for backends whose gradients sit in `param.grad` (single, DDP, FSDP);
    `combine_norm` turns this rank's norm into the global one where ranks hold different weights (pp)."""
    from gptforge.trainer.optim import set_lr

    if combine_norm is None:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm or float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor holding the global norm
            grad_norm = grad_norm.full_tensor()
    else:  # what clip_grad_norm_ does, with the norm made global in between (as torchtitan does)
        params = [p for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        grad_norm = combine_norm(grad_norm)
        torch.nn.utils.clip_grads_with_norm_(params, max_norm or float("inf"), grad_norm)
    # one host sync per step: the price of never applying a NaN update (DeepSpeed pays the same)
    stepped = not skip and bool(torch.isfinite(grad_norm))
    if stepped:
        set_lr(optimizer, lr)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.detach(), stepped


class Strategy(ABC):
    """Sets up model and optimizer for one backend, runs forward/backward/step, saves and loads state.

    What a backend can and cannot do is said by its class attributes, which the rest of gptforge reads
    instead of comparing backend names.
    """

    checkpoint_format: ClassVar[str] = "plain"  # checkpoints of the same format resume under each other
    # None: a checkpoint resumes on any world size (as the data allows); else why it cannot
    fixed_world_size: ClassVar[str | None] = None
    skips_steps: ClassVar[bool] = True  # can leave out one optimizer step on request (spike_policy=skip)
    recomputes_activations: ClassVar[bool] = True  # strategy.activation_checkpointing is applied
    takes_zero_stage: ClassVar[bool] = False  # strategy.zero_stage means something (DeepSpeed)
    # the optimizer steps every weight matrix whole on each rank (Muon orthogonalises whole matrices)
    steps_whole_matrices: ClassVar[bool] = True
    # no rank holds the whole model: every rank must make the same forward calls (evaluation, sampling)
    shards_parameters: bool = False
    # every rank can run the whole model's forward (sampling, task scores); not a pipeline stage's blocks
    runs_whole_model: bool = True
    # mesh dimensions (strategies/mesh.py) this backend can spread over; tp and pp need strategy=fsdp
    parallel_dims: ClassVar[frozenset[str]] = frozenset({"dp_replicate", "dp_shard"})
    # the device the model is built on: "meta" builds no weights, setup materialises each rank's part
    init_device: ClassVar[str] = "cpu"
    # computes under torch.autocast (False: the backend casts the weights to the compute dtype itself)
    autocasts: ClassVar[bool] = True

    def __init__(self, cfg: StrategyConfig, device: str = "auto", precision: str = "auto") -> None:
        self.cfg = cfg
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.mesh_shape = resolve_mesh(cfg, self.world_size)
        self.device = resolve_device(device, self.local_rank, local_world_size())
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.layout: StepLayout | None = None

    @classmethod
    def from_config(cls, cfg: StrategyConfig, trainer_cfg: TrainerConfig) -> Strategy:
        """The strategy for these configs; backends that need more of the trainer config override this."""
        return cls(cfg, device=trainer_cfg.device, precision=trainer_cfg.precision)

    @classmethod
    def check(cls, cfg: Config) -> None:
        """ConfigError for settings this backend cannot run, naming them (before anything is built)."""
        if cfg.strategy.zero_stage is not None and not cls.takes_zero_stage:
            raise ConfigError(
                f"strategy.zero_stage={cfg.strategy.zero_stage} only applies to "
                f"strategy=deepspeed_zero1|2|3, not strategy.name={cfg.strategy.name}"
            )
        if cfg.strategy.activation_checkpointing and not cls.recomputes_activations:
            raise ConfigError(
                f"strategy.activation_checkpointing=true is not supported with {cls.describe(cfg.strategy)}; "
                "use strategy=fsdp or ddp for it"
            )
        if cfg.optim.name == "muon" and not cls.steps_whole_matrices:
            raise ConfigError(
                f"optim.name=muon is not supported with {cls.describe(cfg.strategy)}: Muon needs whole "
                "weight matrices and this backend shards them or its optimizer; use strategy=single or ddp"
            )
        if cfg.trainer.spike_policy == "skip" and not cls.skips_steps:
            raise ConfigError(
                f"trainer.spike_policy=skip is not supported with {cls.describe(cfg.strategy)}: its engine "
                "steps as soon as gradients are reduced; use spike_policy=log"
            )
        if cfg.strategy.tp > 1 and "tp" not in cls.parallel_dims:
            raise ConfigError(
                f"strategy.tp={cfg.strategy.tp} (tensor parallelism) is not supported with "
                f"{cls.describe(cfg.strategy)}; use strategy=fsdp for it, or strategy.tp=1"
            )
        if cfg.strategy.pp > 1 and "pp" not in cls.parallel_dims:
            raise ConfigError(
                f"strategy.pp={cfg.strategy.pp} (pipeline parallelism) is not supported with "
                f"{cls.describe(cfg.strategy)}; use strategy=fsdp for it, or strategy.pp=1"
            )

    @classmethod
    def check_plan(cls, cfg: Config, mesh: MeshShape, grad_accum_steps: int) -> None:
        """ConfigError for what this backend cannot run on `mesh` (known once the world size is)."""
        return None

    @classmethod
    def model_state_shards(cls, cfg: StrategyConfig, world_size: int) -> tuple[int, int, int]:
        """Over how many ranks weights, gradients and optimizer state are split (the memory plan's)."""
        return 1, 1, 1

    @classmethod
    def data_parallel_costs(
        cls, cfg: Config, model: ModelShapes, world_size: int, compute_bytes: int, grad_accum_steps: int
    ) -> DataParallelCosts:
        """What this backend's collectives add to a rank's step, for the memory plan: none in one process."""
        return DataParallelCosts()

    @classmethod
    def describe(cls, cfg: StrategyConfig) -> str:
        """The backend as the summary names it."""
        return cfg.name

    @classmethod
    @abstractmethod
    def consolidate(cls, directory: Path) -> dict[str, torch.Tensor]:
        """The whole model's weights from a checkpoint directory this backend saved, read in one process."""

    @property
    def data_parallel_rank(self) -> int:
        """Which share of each global batch this rank trains on (tp and pp peers share one)."""
        return self.mesh_shape.data_parallel_rank(self.rank)

    @property
    def data_parallel_size(self) -> int:
        return self.mesh_shape.data_parallel_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def precision_name(self) -> str:
        return precision_name(self.autocast_dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.autocasts:
            return contextlib.nullcontext()
        return autocast_context(self.device, self.autocast_dtype)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch onto this rank's device; the loaders pin batches for a GPU, so the copy does not block."""
        if self.device.type == "cuda":
            return tensor.to(self.device, non_blocking=tensor.is_pinned())
        return tensor

    @abstractmethod
    def setup(self, model: nn.Module, optim_cfg: OptimConfig, layout: StepLayout) -> None:
        """Move/wrap the model for this backend (compiled if the layout says so), build its optimizer."""

    @torch.no_grad()
    def load_full_weights(self, groups: Iterable[dict[str, torch.Tensor]], from_rank0: bool = False) -> None:
        """Copy whole tensors (parameter name -> full tensor) into this rank's part of the set-up model,
        group by group; `from_rank0`: only rank 0's groups hold tensors, the others receive their parts.

        Strategies with `init_device="meta"` are filled this way (random initialisation, init_from)."""
        params = dict(self.unwrapped_model.named_parameters(remove_duplicate=False))
        for group in groups:
            for name, tensor in group.items():
                params[name].copy_(tensor)

    @abstractmethod
    def forward_backward(
        self, input_ids: torch.Tensor, targets: torch.Tensor, loss_scale: float, sync_grads: bool
    ) -> torch.Tensor:
        """One micro-batch: forward, backward of `loss * loss_scale`; returns the unscaled loss, detached.

        `sync_grads` is False on all but the last micro-batch of a step, so backends skip the all-reduce.
        """

    @abstractmethod
    def clip_and_step(self, lr: float, skip: bool = False) -> tuple[torch.Tensor, bool]:
        """Clip the global gradient norm to the layout's `grad_clip`, step the optimizer at `lr`, zero grads.

        The step is skipped (weights and optimizer state unchanged) when `skip` is set or the norm is
        not finite on any rank. Returns the global norm before clipping and whether the step was taken.
        """

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write model and optimizer state into `directory` in the backend's own format (all ranks call)."""

    @abstractmethod
    def load(self, directory: Path) -> None:
        """Restore model and optimizer state written by `save` (all ranks call)."""

    @abstractmethod
    def full_model_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights as plain CPU tensors (on rank 0; may be empty elsewhere)."""

    def train_mode(self) -> None:
        """Dropout on: the model trains (what `setup` leaves it in)."""
        self.unwrapped_model.train()

    def eval_mode(self) -> None:
        """Dropout off, for evaluation and sampling (all ranks call; sharded forwards still gather)."""
        self.unwrapped_model.eval()

    @torch.no_grad()
    def eval_loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of one batch without gradients, through the wrapped model (all ranks call)."""
        with self.autocast():
            _, loss = self.model(input_ids, targets)
        return loss.detach()

    @property
    def unwrapped_model(self) -> nn.Module:
        """The model as built, without backend wrappers (for evaluation and sampling)."""
        return self.model

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all ranks, on every rank (counts and totals of an evaluation)."""
        return tensor

    def barrier(self) -> None:
        return None

    def broadcast_flag(self, flag: bool) -> bool:
        """True on every rank if `flag` is True on any rank."""
        return flag

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's `obj` (any picklable object) on every rank."""
        return obj

    def teardown(self) -> None:
        return None
