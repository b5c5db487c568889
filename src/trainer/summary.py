"""What a run is about to do, in one screen: model size, FLOPs, batch, layout, data, where it writes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from gptforge.config import Config, DataConfig
from gptforge.models import GPT
from gptforge.models.lora import apply_lora
from gptforge.trainer.strategies import Strategy


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
    strategy: str
    precision: str
    device: str
    peak_flops_per_sec: float | None
    peak_flops_source: str
    data: str
    run_dir: str
    start_step: int
    max_steps: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for people."""
        params = f"{_si(self.params_total)} total, {_si(self.params_non_embedding)} non-embedding"
        if self.params_trainable != self.params_total:
            params += f", {_si(self.params_trainable)} trainable"
        batch = (
            f"{self.micro_batch_size} sequences x {self.grad_accum_steps} accumulation x "
            f"{self.world_size} ranks x {self.block_size} tokens"
        )
        peak = "n/a (MFU not reported; set trainer.peak_flops_per_sec to get it)"
        if self.peak_flops_per_sec:
            peak = f"{_si(self.peak_flops_per_sec)}FLOP/s per device ({self.peak_flops_source})"
        start = f"resuming at step {self.start_step}" if self.start_step else "from step 0"
        return [
            ("parameters", params),
            ("FLOPs per token", f"{_si(self.flops_per_token)} (6N + attention, forward + backward)"),
            ("tokens per step", f"{self.tokens_per_step:,} ({batch})"),
            ("world size", str(self.world_size)),
            ("strategy", self.strategy),
            ("precision", self.precision),
            ("device", self.device),
            ("peak for MFU", peak),
            ("data", self.data),
            ("steps", f"{self.max_steps:,}, {start}"),
            ("run directory", self.run_dir),
        ]

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
    if cfg.source == "mixture":
        parts = [f"{source.path or source.name} (weight {source.weight:g})" for source in cfg.sources]
        return "mixture: " + ", ".join(parts)
    where = f"{cfg.name} [{cfg.split}]" if cfg.source == "hf_hub" else cfg.path
    return f"{cfg.source}: {where}"


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def describe_strategy(cfg: Config) -> str:
    if cfg.strategy.name == "deepspeed":
        return f"deepspeed ZeRO-{cfg.strategy.zero_stage}"
    return cfg.strategy.name


def describe_run(
    cfg: Config,
    strategy: Strategy,
    run_dir: Path,
    flops_per_token: int,
    peak_flops_per_sec: float | None,
    grad_accum_steps: int,
    start_step: int,
) -> RunSummary:
    """The summary of `cfg` as laid out by `strategy`; parameters are counted on a meta-device model."""
    with torch.device("meta"):  # no memory, and works when the strategy has sharded the real weights
        model = GPT(cfg.model)
        total, non_embedding = model.num_params(non_embedding=False), model.num_params(non_embedding=True)
        apply_lora(model, cfg.model.lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens_per_step = (
        cfg.trainer.micro_batch_size * grad_accum_steps * strategy.world_size * cfg.model.block_size
    )
    return RunSummary(
        name=cfg.name,
        params_total=total,
        params_non_embedding=non_embedding,
        params_trainable=trainable,
        flops_per_token=flops_per_token,
        tokens_per_step=tokens_per_step,
        micro_batch_size=cfg.trainer.micro_batch_size,
        grad_accum_steps=grad_accum_steps,
        block_size=cfg.model.block_size,
        world_size=strategy.world_size,
        strategy=describe_strategy(cfg),
        precision=strategy.precision_name,
        device=describe_device(strategy.device),
        peak_flops_per_sec=peak_flops_per_sec,
        peak_flops_source="trainer.peak_flops_per_sec"
        if cfg.trainer.peak_flops_per_sec
        else "bf16 dense table",
        data=describe_data(cfg.data),
        run_dir=str(run_dir.resolve()),
        start_step=start_step,
        max_steps=cfg.trainer.max_steps,
    )
