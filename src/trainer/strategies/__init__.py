"""Strategies: one per backend behind `Strategy`; `build_strategy` picks by `strategy.name`."""

from gptforge.config import StrategyConfig, TrainerConfig
from gptforge.trainer.strategies.base import Strategy
from gptforge.trainer.strategies.ddp import DDPStrategy
from gptforge.trainer.strategies.deepspeed import DeepSpeedStrategy
from gptforge.trainer.strategies.fsdp import FSDPStrategy
from gptforge.trainer.strategies.single import SingleDeviceStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    "single": SingleDeviceStrategy,
    "ddp": DDPStrategy,
    "fsdp": FSDPStrategy,
    "deepspeed": DeepSpeedStrategy,
}


def build_strategy(cfg: StrategyConfig, trainer_cfg: TrainerConfig) -> Strategy:
    """The strategy named by `cfg.name`, on the configured device and precision."""
    return STRATEGIES[cfg.name].from_config(cfg, trainer_cfg)


__all__ = [
    "STRATEGIES",
    "DDPStrategy",
    "DeepSpeedStrategy",
    "FSDPStrategy",
    "SingleDeviceStrategy",
    "Strategy",
    "build_strategy",
]
