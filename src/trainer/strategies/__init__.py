"""Strategies: one per backend behind `Strategy`; `build_strategy` picks by `strategy.name`."""

from gptforge.config import StrategyConfig, TrainerConfig
from gptforge.trainer.strategies.base import Strategy
from gptforge.trainer.strategies.single import SingleDeviceStrategy

STRATEGIES: dict[str, type[Strategy]] = {"single": SingleDeviceStrategy}


def build_strategy(cfg: StrategyConfig, trainer_cfg: TrainerConfig) -> Strategy:
    """The strategy named by `cfg.name`, on the configured device and precision."""
    return STRATEGIES[cfg.name](cfg, device=trainer_cfg.device, precision=trainer_cfg.precision)


__all__ = ["STRATEGIES", "SingleDeviceStrategy", "Strategy", "build_strategy"]
