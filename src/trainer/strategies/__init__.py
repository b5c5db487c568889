"""Strategies: one per backend behind `Strategy`; `build_strategy` picks by `strategy.name`."""

from gptforge.config import StrategyConfig, TrainerConfig
from gptforge.errors import ConfigError
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
    strategy = STRATEGIES[cfg.name].from_config(cfg, trainer_cfg)
    if trainer_cfg.sample_tokens and strategy.shards_parameters and strategy.world_size > 1:
        # sampling runs on rank 0 alone, which holds only a shard of the weights: refuse now, not hang later
        strategy.teardown()
        raise ConfigError(
            f"trainer.sample_tokens={trainer_cfg.sample_tokens} needs the whole model on rank 0, but "
            f"strategy.name={cfg.name} shards it over {strategy.world_size} ranks; "
            "set trainer.sample_tokens=0 and sample from a consolidated checkpoint (scripts/consolidate.py)"
        )
    return strategy


__all__ = [
    "STRATEGIES",
    "DDPStrategy",
    "DeepSpeedStrategy",
    "FSDPStrategy",
    "SingleDeviceStrategy",
    "Strategy",
    "build_strategy",
]
