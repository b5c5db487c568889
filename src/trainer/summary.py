"""What a run is about to do, in one screen: size, FLOPs, batch, length, data, memory, where it writes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from gptforge.config import Config, DataConfig
from gptforge.models import GPT
from gptforge.models.lora import apply_lora
from gptforge.trainer.communication import Communication, estimate_communication
from gptforge.trainer.memory import MemoryEstimate, ModelShapes, estimate_memory
from gptforge.trainer.optim import adamw_kernel

if TYPE_CHECKING:
    from gptforge.trainer.plan import RunPlan


@dataclass(frozen=True)
class RunSummary:
    """Facts about a run, printed at start-up and attached to wandb / TensorBoard runs."""

    name: str
    params_total: int
    params_non_embedding: int
    params_trainable: int
    flops_per_token: int
    tokens_per_step: int
    micro_batch_size: int
    grad_accum_steps: int
    block_size: int
    world_size: int
    data_parallel_size: int  # ranks that read different data (world size over tp and pp)
    strategy: str
    precision: str
    device: str
    peak_flops_per_sec: float | None
    peak_flops_source: str
    data: str
    corpus_tokens: int | None  # training tokens in the corpus, where the loader knows them
    init_from: str | None
    memory: str
    communication: str
    run_dir: str
    start_step: int
    max_steps: int
    max_tokens: float | None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def total_tokens(self) -> int:
        return self.max_steps * self.tokens_per_step

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for people."""
        params = f"{_si(self.params_total)} total, {_si(self.params_non_embedding)} non-embedding"
        if self.params_trainable != self.params_total:
            params += f", {_si(self.params_trainable)} trainable"
        ranks = "ranks" if self.data_parallel_size == self.world_size else "data-parallel ranks"
        batch = (
            f"{self.micro_batch_size} sequences x {self.grad_accum_steps} accumulation x "
            f"{self.data_parallel_size} {ranks} x {self.block_size} tokens"
        )
        peak = "n/a (MFU not reported; set trainer.peak_flops_per_sec to get it)"
        if self.peak_flops_per_sec:
            peak = f"{_si(self.peak_flops_per_sec)}FLOP/s per device ({self.peak_flops_source})"
        start = f"resuming at step {self.start_step}" if self.start_step else "from step 0"
        budget = f" (trainer.max_tokens={self.max_tokens:g})" if self.max_tokens is not None else ""
        length = (
            f"{self.max_steps:,} steps x {self.tokens_per_step:,} = {_si(self.total_tokens)} tokens{budget}"
        )
        rows = [
            ("parameters", params),
            ("FLOPs per token", f"{_si(self.flops_per_token)} (6N + attention, forward + backward)"),
            ("tokens per step", f"{self.tokens_per_step:,} ({batch})"),
            ("length", f"{length}, {start}"),
            ("world size", str(self.world_size)),
            ("strategy", self.strategy),
            ("precision", self.precision),
            ("device", self.device),
            ("memory (estimate)", self.memory),
            ("communication", self.communication),
            ("peak for MFU", peak),
            ("data", self.data),
        ]
        if self.corpus_tokens:
            epochs = self.total_tokens / self.corpus_tokens
            rows.append(
                ("corpus", f"{_si(self.corpus_tokens)} training tokens: the run reads {epochs:.2f} epochs")
            )
        if self.init_from:
            rows.append(("init from", self.init_from))
        rows.append(("run directory", self.run_dir))
        return rows

    def lines(self) -> list[str]:
        width = max(len(label) for label, _ in self.rows())
        return [f"gptforge run '{self.name}'"] + [
            f"  {label:<{width}}  {value}" for label, value in self.rows()
        ]


def _si(value: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:g}"


def describe_data(cfg: DataConfig) -> str:
    """Where the training tokens come from, in one line."""
    from gptforge.data.pipeline import describe_source

    return describe_source(cfg)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def describe_strategy(cfg: Config) -> str:
    from gptforge.trainer.strategies import strategy_class

    return strategy_class(cfg.strategy.name).describe(cfg.strategy)


def plan_estimates(plan: RunPlan, model: GPT, precision: str) -> tuple[MemoryEstimate, Communication]:
    """Per-rank memory and communication of a planned run of `model` (meta is enough) at `precision`."""
    cfg, shapes = plan.cfg, ModelShapes.of(model)
    compute_bytes = 2 if precision in ("bf16", "fp16") else 4
    world_size, accumulation = plan.world.world_size, plan.grad_accum_steps
    kernel = adamw_kernel(cfg.optim, plan.device)
    memory = estimate_memory(cfg, shapes, world_size, compute_bytes, accumulation, optimizer_kernel=kernel)
    return memory, estimate_communication(cfg, shapes, world_size, compute_bytes, accumulation)


def describe_run(
    plan: RunPlan,
    precision: str,
    flops_per_token: int,
    peak_flops_per_sec: float | None,
    start_step: int,
    train_loader: object | None = None,
) -> RunSummary:
    """The summary of a planned run; parameters are counted on a meta-device model."""
    cfg = plan.cfg
    with torch.device("meta"):  # no memory, and works when the strategy has sharded the real weights
        model = GPT(cfg.model)
        total, non_embedding = model.num_params(non_embedding=False), model.num_params(non_embedding=True)
        apply_lora(model, cfg.model.lora)
    memory, communication = plan_estimates(plan, model, precision)
    return RunSummary(
        name=cfg.name,
        params_total=total,
        params_non_embedding=non_embedding,
        params_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        flops_per_token=flops_per_token,
        tokens_per_step=plan.tokens_per_step,
        micro_batch_size=cfg.trainer.micro_batch_size,
        grad_accum_steps=plan.grad_accum_steps,
        block_size=cfg.model.block_size,
        world_size=plan.world.world_size,
        data_parallel_size=plan.mesh.data_parallel_size,
        strategy=describe_strategy(cfg),
        precision=precision,
        device=describe_device(plan.device),
        peak_flops_per_sec=peak_flops_per_sec,
        peak_flops_source="trainer.peak_flops_per_sec"
        if cfg.trainer.peak_flops_per_sec
        else "bf16 dense table",
        data=describe_data(cfg.data),
        corpus_tokens=getattr(train_loader, "corpus_tokens", None),
        init_from=plan.init.describe() if plan.init is not None else None,
        memory=memory.describe(),
        communication=communication.describe(),
        run_dir=str(plan.run_dir.resolve()),
        start_step=start_step,
        max_steps=cfg.trainer.max_steps,
        max_tokens=cfg.trainer.max_tokens,
    )
