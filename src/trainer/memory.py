"""Per-rank memory and communication on paper: what a user checks before a run (the dry run prints both).

Memory is counted tensor by tensor from what is allocated: fp32 weights, gradients and AdamW state (4 + 4 + 8
bytes per trainable parameter) divided by the ranks that shard each of them; what autograd saves for
backward in one micro-batch; the loss over the vocabulary, often the largest single term; and what the
backend allocates for its collectives (`Strategy.data_parallel_costs`). The peak is at one end of backward:
its start holds every activation, its end every gradient, since backward frees a block's activations as it
fills that block's gradients. Checked against measured peaks in tests/trainer/test_memory.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from torch import nn

from gptforge.config import Config, ModelConfig

if TYPE_CHECKING:
    from gptforge.trainer.strategies.base import Strategy

GIB = 2**30
FP32 = 4
ADAM_STATES = 2  # exp_avg and exp_avg_sq, fp32 each
# what AdamW's step allocates besides its state, in fp32 tensors the size of (measured on the CPU):
# the fused kernel nothing; foreach sqrt(exp_avg_sq) of every parameter at once; the for-loop three of
# the largest parameter (sqrt(exp_avg_sq), the quotient, ...) at a time
ADAM_TEMPORARIES = {"fused": 0, "foreach": 1, "for-loop": 3}


@dataclass(frozen=True)
class ModelShapes:
    """What the plan needs of a model (built on the meta device): parameter counts by where they live."""

    total: int  # tied weights once
    trainable: int
    per_block: int  # one transformer block
    root: int  # embeddings, final norm and head: what FSDP shards as the root module
    root_trainable: int
    matmul_weights: int  # weights multiplied in the compute dtype: every linear layer, the head included
    largest: int  # elements of the largest parameter

    @classmethod
    def of(cls, model: nn.Module) -> ModelShapes:
        params = list(model.parameters())  # each shared parameter once
        blocks = {id(p) for p in model.blocks.parameters()}
        root = [p for p in params if id(p) not in blocks]
        linears = {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Linear)}
        blocks_in_order = model.blocks.values() if isinstance(model.blocks, nn.ModuleDict) else model.blocks
        first_block = next(iter(blocks_in_order))  # every block has the same shapes
        return cls(
            total=sum(p.numel() for p in params),
            trainable=sum(p.numel() for p in params if p.requires_grad),
            per_block=sum(p.numel() for p in first_block.parameters()),
            root=sum(p.numel() for p in root),
            root_trainable=sum(p.numel() for p in root if p.requires_grad),
            matmul_weights=sum(w.numel() for w in linears.values()),
            largest=max(p.numel() for p in params),
        )


@dataclass(frozen=True)
class DataParallelCosts:
    """What a backend's data parallelism adds to one rank's step: memory for its collectives, the gradients
    it holds while micro-batches accumulate, and the bytes each rank sends per optimizer step by collective
    (it receives about as many)."""

    buffers: float = 0.0
    accumulated_gradients: float | None = None  # None: the gradients the optimizer steps, nothing more
    traffic: tuple[tuple[str, float], ...] | None = ()  # None: not estimated for this backend


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank, by what holds them, and the peak they add up to."""

    parameters: float
    gradients: float  # as the optimizer steps them (sharded where the backend shards them)
    optimizer: float
    activations: float  # saved for backward by the end of forward (with autocast's weight copies)
    activations_other: float  # the same with strategy.activation_checkpointing the other way round
    checkpointing: bool  # strategy.activation_checkpointing: which of the two the run uses
    loss: float  # logits and the cross-entropy's fp32 tensors at the start of backward
    buffers: float  # the backend's: gathered weights and gradient copies (FSDP), gradient buckets (DDP)
    accumulated_gradients: float  # gradients alive while a later micro-batch runs forward
    end_of_backward: float  # alive with every gradient: a recomputed block, the optimizer's temporaries
    stage: str = ""  # with pipeline stages, the worst one's name

    @property
    def total(self) -> float:
        start_of_backward = self.accumulated_gradients + self.activations + self.loss
        end = max(self.gradients, self.accumulated_gradients) + self.end_of_backward
        return self.parameters + self.optimizer + self.buffers + max(start_of_backward, end)

    def describe(self) -> str:
        other = f"{'without' if self.checkpointing else 'with'} checkpointing"
        grads = _size(self.gradients)
        if self.accumulated_gradients > self.gradients:
            grads += f", {_size(self.accumulated_gradients)} unsharded while accumulating"
        parts = (
            ("weights", _size(self.parameters)),
            ("grads", grads),
            ("AdamW", _size(self.optimizer)),
            ("activations", f"{_size(self.activations)} ({_size(self.activations_other)} {other})"),
            ("loss", _size(self.loss)),
            ("buffers", _size(self.buffers)),
        )
        detail = ", ".join(f"{name} {value}" for name, value in parts)
        stage = f", {self.stage}" if self.stage else ""
        return f"~{_size(self.total)} per rank at peak ({detail}{stage})"


def _size(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.2f} GiB" if n_bytes >= GIB / 10 else f"{n_bytes / 2**20:.1f} MiB"


def saved_bytes_per_token_per_layer(cfg: ModelConfig, compute: int, autocast: bool) -> float:
    """Bytes one block saves for backward per token; `compute`: bytes of the matmuls' dtype; under
    `autocast` the residual stream stays fp32 and each linear layer keeps its own cast of its input."""
    C, hidden = cfg.n_embd, cfg.mlp_hidden_size
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    residual = FP32 if autocast else compute
    swiglu = cfg.components.mlp == "swiglu"
    # each norm keeps its input (the residual stream), RMSNorm in plain ops its normalised input too;
    # its output is kept by the linear layers after it, in the compute dtype (under autocast one cast for
    # each of them: SwiGLU's gate and up)
    rms = cfg.components.norm == "rmsnorm"
    norm_outputs = 3 if swiglu and autocast else 2
    norms = 2 * C * (2 if rms else 1) * residual + norm_outputs * C * compute
    # attention keeps q, k, v as SDPA sees them, and its output (the input of proj); a saved view of the
    # qkv projection's output keeps that whole output alive
    rope, grouped, fused = cfg.components.position == "rope", kv != q, q + 2 * kv
    if rope and grouped:
        q_k_v = 3 * q  # rotated q, repeated k and v: copies; nothing keeps the projection's output
    elif rope:
        q_k_v = q + kv + fused  # rotated q and k; v is a view
    elif grouped:
        q_k_v = fused + 2 * q  # q is a view; repeated k and v are copies
    else:
        q_k_v = fused
    attention = (q_k_v + q) * compute
    # swiglu: gate out, silu(gate), up out, their product; gelu: fc out, GELU out; relu2: relu out, square
    mlp = (4 if swiglu else 2) * hidden * compute
    return norms + attention + mlp


def estimate_memory(
    cfg: Config,
    model: ModelShapes,
    world_size: int,
    compute_bytes: int,
    grad_accum_steps: int = 1,
    optimizer_kernel: str = "fused",
) -> MemoryEstimate:
    """Per-rank bytes at the peak of a training step of `cfg` on `world_size` ranks; `compute_bytes` is 2
    under bf16/fp16, else 4; `optimizer_kernel`: how AdamW steps (`optim.adamw_kernel`)."""
    backend = backend_class(cfg, world_size)
    weight_shards, grad_shards, optim_shards = backend.model_state_shards(cfg.strategy, world_size)
    costs = backend.data_parallel_costs(cfg, model, world_size, compute_bytes, grad_accum_steps)
    # tensor parallelism splits every saved activation by heads, MLP columns or (norms, residual stream)
    # sequence; the logits only with loss parallel
    tp = cfg.strategy.tp if "tp" in backend.parallel_dims else 1
    pp = cfg.strategy.pp
    autocast = backend.autocasts and compute_bytes < FP32
    residual = FP32 if autocast else compute_bytes
    weight_copies = model.matmul_weights * compute_bytes if autocast else 0
    gradients = model.trainable * FP32 / grad_shards
    # under accumulation the gradients of earlier micro-batches stay while later ones run forward
    accumulated = costs.accumulated_gradients
    if accumulated is None:
        accumulated = gradients if grad_accum_steps > 1 else 0.0
    temporaries = ADAM_TEMPORARIES[optimizer_kernel] * FP32 / optim_shards
    temporaries *= model.trainable if optimizer_kernel == "foreach" else model.largest
    tokens = cfg.trainer.micro_batch_size * cfg.model.block_size / tp
    per_layer = tokens * saved_bytes_per_token_per_layer(cfg.model, compute_bytes, autocast)
    final_norm = tokens * cfg.model.n_embd * (residual * (2 if cfg.model.components.norm == "rmsnorm" else 1))
    final_norm += tokens * cfg.model.n_embd * compute_bytes
    loss = cfg.model.block_size * cfg.trainer.micro_batch_size * cfg.model.vocab_size
    loss *= (compute_bytes + 3 * FP32) / (tp if cfg.strategy.loss_parallel else 1)

    def stage(layers: int, in_flight: int, last: bool, checkpointing: bool) -> MemoryEstimate:
        # 1F1B: the first stage holds the activations of min(pp, micro-batches) micro-batches, the last one
        if checkpointing:  # each block keeps its input; one block's activations live again as it recomputes
            saved, recompute = layers * tokens * cfg.model.n_embd * residual, per_layer
        else:
            saved, recompute = layers * per_layer, 0.0
        activations = in_flight * (saved + (final_norm if last else 0)) + weight_copies / pp
        return MemoryEstimate(
            parameters=model.total * FP32 / weight_shards,
            gradients=gradients,
            optimizer=model.trainable * ADAM_STATES * FP32 / optim_shards,
            activations=activations,
            activations_other=0.0,
            checkpointing=checkpointing,
            loss=loss if last else 0.0,
            buffers=costs.buffers,
            accumulated_gradients=accumulated,
            end_of_backward=max(recompute, temporaries),
        )

    def worst(checkpointing: bool) -> MemoryEstimate:
        layers = -(-cfg.model.n_layer // pp)
        if pp == 1:
            return stage(layers, 1, last=True, checkpointing=checkpointing)
        first = stage(layers, min(pp, grad_accum_steps), last=False, checkpointing=checkpointing)
        last = stage(layers, 1, last=True, checkpointing=checkpointing)
        if first.total >= last.total:
            return replace(first, stage="first pipeline stage")
        return replace(last, stage="last pipeline stage")

    checkpointing = cfg.strategy.activation_checkpointing
    return replace(worst(checkpointing), activations_other=worst(not checkpointing).activations)


def backend_class(cfg: Config, world_size: int) -> type[Strategy]:
    """The strategy class `cfg` runs on `world_size` ranks (strategy.name=auto resolved)."""
    from gptforge.trainer.strategies import resolve_strategy_name, strategy_class

    return strategy_class(resolve_strategy_name(cfg.strategy.name, world_size))
