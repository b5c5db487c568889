"""Strategies: one per backend behind `Strategy`, registered by name; a backend's module is imported only
when a run names it (FSDP's and DeepSpeed's imports alone take a second)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gptforge.errors import LaunchError

if TYPE_CHECKING:
    from gptforge.config import StrategyConfig, TrainerConfig
    from gptforge.trainer.strategies.base import Strategy

# strategy.name -> "module:class"; the config's valid names are these (and auto)
STRATEGIES: dict[str, str] = {
    "single": "gptforge.trainer.strategies.single:SingleDeviceStrategy",
    "ddp": "gptforge.trainer.strategies.ddp:DDPStrategy",
    "fsdp": "gptforge.trainer.strategies.fsdp:FSDPStrategy",
    "deepspeed": "gptforge.trainer.strategies.deepspeed:DeepSpeedStrategy",
}


def strategy_class(name: str) -> type[Strategy]:
    """The class registered as `name` (one of STRATEGIES)."""
    module, _, cls = STRATEGIES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def resolve_strategy_name(name: str, world_size: int) -> str:
    """`auto` is `single` for one process and `ddp` for several; `single` with several is refused."""
    if name == "auto":
        return "ddp" if world_size > 1 else "single"
    if name == "single" and world_size > 1:
        raise LaunchError(
            f"strategy=single runs one process, but this job has {world_size} (NPROC x NNODES): they would "
            "train independent copies; use strategy=auto (ddp for several processes), ddp, fsdp or "
            "deepspeed_zero1|2|3"
        )
    return name


def build_strategy(cfg: StrategyConfig, trainer_cfg: TrainerConfig) -> Strategy:
    """The strategy named by `cfg.name`, on the configured device and precision."""
    return strategy_class(cfg.name).from_config(cfg, trainer_cfg)


def __getattr__(name: str) -> Any:
    if name == "Strategy":
        from gptforge.trainer.strategies.base import Strategy

        return Strategy
    raise AttributeError(f"module 'gptforge.trainer.strategies' has no attribute {name!r}")


__all__ = ["STRATEGIES", "Strategy", "build_strategy", "resolve_strategy_name", "strategy_class"]
