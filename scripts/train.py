"""Train a GPT from a composed config: `python scripts/train.py experiment=smoke model.n_layer=2`."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from gptforge.cli import one_line_errors, run_cli
from gptforge.config import Config, register_configs
from gptforge.trainer import train

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    config: Config = OmegaConf.to_object(cfg)
    if config.dry_run:
        print(OmegaConf.to_yaml(OmegaConf.structured(config)), end="")
        print("config is valid (dry run: nothing trained)")
        return None
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = train(config, run_dir)
    return metrics.get("val_loss")  # for sweepers that minimise a returned value


if __name__ == "__main__":
    run_cli(main)
