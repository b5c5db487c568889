"""Per-rank memory on paper: model state by how the strategy shards it, activations by what autograd saves.

The estimate is what a user checks before a run: parameters, gradients and AdamW state (fp32, 4 + 4 + 8
bytes per trainable parameter) divided by the ranks that shard each of them, and the activations of one
micro-batch (only one is alive at a time under gradient accumulation), counted tensor by tensor from what
each layer saves for backward, plus the loss over the vocabulary, which is often the largest single term.
"""

from __future__ import annotations

from dataclasses import dataclass

from gptforge.config import Config, ModelConfig

GIB = 2**30
FP32 = 4
ADAM_STATES = 2  # exp_avg and exp_avg_sq, fp32 each


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank, by what holds them."""

    parameters: float
    gradients: float
    optimizer: float
    activations: float
    loss: float  # logits, their fp32 copy and log-softmax over the vocabulary, for one micro-batch

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.loss

    def describe(self) -> str:
        parts = (
            ("weights", self.parameters),
            ("grads", self.gradients),
            ("AdamW", self.optimizer),
            ("activations", self.activations),
            ("loss", self.loss),
        )
        detail = ", ".join(f"{name} {_size(value)}" for name, value in parts)
        return f"~{_size(self.total)} per rank ({detail})"


def _size(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.2f} GiB" if n_bytes >= GIB / 10 else f"{n_bytes / 2**20:.1f} MiB"


def saved_per_token_per_layer(cfg: ModelConfig) -> int:
    """Elements one block saves for backward per token: norm inputs and outputs, the attention's q, k, v
    (k and v repeated to n_head heads) and output, and the MLP's hidden activations."""
    C, hidden = cfg.n_embd, cfg.mlp_hidden_size
    attention = 3 * cfg.n_head * cfg.head_dim + C  # q, repeated k and v, output (the input of proj)
    norms = 4 * C  # input and output of both norms
    # swiglu: gate out, up out, silu(gate), their product (the input of proj); gelu: fc out, GELU out
    mlp = 4 * hidden if cfg.components.mlp == "swiglu" else 2 * hidden
    return norms + attention + mlp


def estimate_memory(
    cfg: Config, trainable_params: int, total_params: int, world_size: int, activation_bytes: int
) -> MemoryEstimate:
    """Per-rank bytes for `cfg` on `world_size` ranks; `activation_bytes` is 2 under bf16 autocast, else 4."""
    model, trainer = cfg.model, cfg.trainer
    from gptforge.trainer.strategies import resolve_strategy_name, strategy_class

    backend = strategy_class(resolve_strategy_name(cfg.strategy.name, world_size))
    weight_shards, grad_shards, optim_shards = backend.model_state_shards(cfg.strategy, world_size)
    # tensor parallelism splits every saved activation by heads, MLP columns or (norms, residual
    # stream) sequence; the logits only with loss parallel
    tp = cfg.strategy.tp if "tp" in backend.parallel_dims else 1
    tokens = trainer.micro_batch_size * model.block_size
    if cfg.strategy.activation_checkpointing:
        # each block keeps only its input; one block's activations live again while it recomputes
        layers = model.n_layer * model.n_embd + saved_per_token_per_layer(model)
    else:
        layers = model.n_layer * saved_per_token_per_layer(model)
    embeddings_and_final_norm = 3 * model.n_embd
    activations = tokens * (layers + embeddings_and_final_norm) * activation_bytes / tp
    # logits in the compute dtype, their fp32 copy and log-softmax's fp32 output (what backward keeps)
    loss = (
        tokens * model.vocab_size * (activation_bytes + 2 * FP32) / (tp if cfg.strategy.loss_parallel else 1)
    )
    return MemoryEstimate(
        parameters=total_params * FP32 / weight_shards,
        gradients=trainable_params * FP32 / grad_shards,
        optimizer=trainable_params * ADAM_STATES * FP32 / optim_shards,
        activations=activations,
        loss=loss,
    )
