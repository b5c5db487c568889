"""Strategies: one per backend behind `Strategy`; `build_strategy` picks by `strategy.name`."""

from gptforge.config import StrategyConfig, TrainerConfig
from gptforge.errors import LaunchError
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
    return STRATEGIES[cfg.name].from_config(cfg, trainer_cfg)


__all__ = [
    "STRATEGIES",
    "DDPStrategy",
    "DeepSpeedStrategy",
    "FSDPStrategy",
    "SingleDeviceStrategy",
    "Strategy",
    "build_strategy",
    "resolve_strategy_name",
]
