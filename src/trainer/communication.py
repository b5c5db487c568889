"""Bytes each rank sends per optimizer step, by collective, on paper (the dry run prints it).

A ring all-gather or reduce-scatter of a tensor over n ranks sends (n - 1)/n of it from each rank, an
all-reduce twice that; each rank receives about as much as it sends. Data parallelism is the backend's
(`Strategy.data_parallel_costs`); tensor and pipeline parallelism move activations, counted here.
"""

from __future__ import annotations

from dataclasses import dataclass

from gptforge.config import Config
from gptforge.trainer.memory import ModelShapes, backend_class


@dataclass(frozen=True)
class Communication:
    """Bytes sent per rank per optimizer step, by collective; None where the backend's are not modelled."""

    parts: tuple[tuple[str, float], ...] | None
    backend: str

    @property
    def total(self) -> float | None:
        return None if self.parts is None else sum(bytes_sent for _, bytes_sent in self.parts)

    def describe(self) -> str:
        if self.parts is None:
            return f"not estimated for {self.backend}"
        parts = [(name, bytes_sent) for name, bytes_sent in self.parts if bytes_sent > 0]
        if not parts:
            return "none (no collectives between ranks)"
        detail = ", ".join(f"{name} {_size(bytes_sent)}" for name, bytes_sent in parts)
        return f"~{_size(self.total)} sent per rank per step ({detail}), about as much received"


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 / 10 else f"{n_bytes / 2**20:.1f} MiB"


def estimate_communication(
    cfg: Config, model: ModelShapes, world_size: int, compute_bytes: int, grad_accum_steps: int = 1
) -> Communication:
    """What each rank of `cfg` on `world_size` ranks sends per step; `compute_bytes` as for the memory."""
    backend = backend_class(cfg, world_size)
    costs = backend.data_parallel_costs(cfg, model, world_size, compute_bytes, grad_accum_steps)
    if costs.traffic is None:
        return Communication(None, backend.describe(cfg.strategy))
    strategy, C = cfg.strategy, cfg.model.n_embd
    tp = strategy.tp if "tp" in backend.parallel_dims else 1
    tokens = cfg.trainer.micro_batch_size * cfg.model.block_size
    layers = -(-cfg.model.n_layer // strategy.pp)
    parts = list(costs.traffic)
    if tp > 1:
        # each sublayer (attention, MLP) all-gathers its sequence-split input and reduce-scatters its
        # output, forward and again (the conjugates) in backward, and once more when a block recomputes;
        # embedding and head add one pair each way
        passes = 3 if strategy.activation_checkpointing else 2
        collectives = layers * 2 * 2 * passes + 4
        activation = tokens * C * compute_bytes * (tp - 1) / tp
        per_micro_batch = collectives * activation
        if not strategy.loss_parallel:  # the logits are gathered whole on every tp rank
            per_micro_batch += tokens * cfg.model.vocab_size * compute_bytes * (tp - 1) / tp
        parts.append(("tensor-parallel activations", grad_accum_steps * per_micro_batch))
    if strategy.pp > 1:  # a stage sends its output forward and the gradient of its input backward
        # whole sequences: a TP stage gathers its sequence-parallel output before sending it (pipeline.py)
        parts.append(("pipeline sends", grad_accum_steps * 2 * tokens * C * compute_bytes))
    return Communication(tuple(parts), backend.describe(cfg.strategy))
