"""Configs composed as `scripts/train.py` composes them, for code that is not a Hydra app: the dry run,
benchmarks and tests all read the same `configs/` through this one function."""

from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from gptforge.config import Config, register_configs

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # the checkout's configs/ (src/ is gptforge)


def compose_dict(overrides: list[str], config_dir: Path = CONFIG_DIR) -> DictConfig:
    """The composed config before validation, as `@hydra.main` would see it, without Hydra's own node."""
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # what @hydra.main does: lets ${hydra:...} resolve
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg


def compose(overrides: list[str] | None = None, config_dir: Path = CONFIG_DIR) -> Config:
    """The validated `Config` that `scripts/train.py <overrides>` would run."""
    return OmegaConf.to_object(compose_dict(list(overrides or []), config_dir))
