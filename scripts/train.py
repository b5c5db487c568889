"""Train a GPT from a composed config: `python scripts/train.py experiment=smoke model.n_layer=2`.

`dry_run=true` (what `DRY_RUN=1 ./launch.sh` passes) checks everything that can be checked without
training and prints the plan; it composes the config without Hydra's run directory, so nothing is written.
"""

from __future__ import annotations

from gptforge.preemption import watch_for_preemption

watch_for_preemption()  # first of all: a job preempted while it starts up still exits 75 (75 = requeue me)

import logging
import os
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from gptforge.cli import check_group_lists, console_to_log, one_line_errors, run_cli
from gptforge.compose import CONFIG_DIR, compose_dict
from gptforge.config import Config, register_configs
from gptforge.trainer import train
from gptforge.trainer.build import dry_run

DRY_RUN = re.compile(r"^\+{0,2}dry_run=(true|True|1|yes)$")

register_configs()


@one_line_errors
def run(cfg: DictConfig, run_dir: Path) -> float | None:
    config: Config = OmegaConf.to_object(cfg)
    if config.debug or os.environ.get("GPTFORGE_DEBUG", "") not in ("", "0"):
        logging.getLogger().setLevel(logging.INFO)
    metrics = train(config, run_dir)
    return metrics.get("val_loss")  # for sweepers that minimise a returned value


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    log = run_dir / "train.log" if os.environ.get("RANK", "0") == "0" else None
    with console_to_log(log):  # train.log holds what the console shows
        return run(cfg, run_dir)


@one_line_errors
def plan_only(cfg: DictConfig) -> None:
    config: Config = OmegaConf.to_object(cfg)
    dry_run(config, Path(config.out_dir))


def main_dry_run(overrides: list[str]) -> None:
    """Compose as @hydra.main would, without creating the run directory, then print the plan."""
    plan_only(compose_dict(overrides))


def entry() -> None:
    argv = sys.argv[1:]
    check_group_lists(argv, CONFIG_DIR)
    if any(DRY_RUN.match(arg) for arg in argv) and not any(arg.startswith("-") for arg in argv):
        main_dry_run(argv)
    else:
        main()


if __name__ == "__main__":
    run_cli(entry)
