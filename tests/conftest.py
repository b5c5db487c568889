"""Shared test helpers: configs composed through Hydra exactly as `scripts/train.py` composes them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from gptforge.config import Config, register_configs

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"

register_configs()

# a run small enough for a unit test: seconds on one CPU core
TINY = [
    "experiment=smoke",
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "trainer.micro_batch_size=4",
    "trainer.eval_batches=2",
    "logger.console.progress_bar=false",
]


def compose_config(overrides: list[str] | None = None) -> Config:
    """The validated `Config` that `scripts/train.py <overrides>` would run."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides or []), return_hydra_config=True)
        return OmegaConf.to_object(_without_hydra(cfg))


def _without_hydra(cfg):
    HydraConfig.instance().set_config(cfg)  # what @hydra.main does: lets ${hydra:...} resolve
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_script(script: str, *args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 600):
    """Run `scripts/<script>` in a fresh interpreter, as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def tiny_config(tmp_path: Path):
    """A factory for tiny validated configs writing into a fresh run directory."""

    def make(*overrides: str) -> Config:
        return compose_config([*TINY, f"out_dir={tmp_path / 'run'}", *overrides])

    return make


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chat model: the TINY model pretrained for a few steps, then fine-tuned on data/sft_example.jsonl."""
    from gptforge.trainer import train

    root = tmp_path_factory.mktemp("sft_run")
    few = ["trainer.max_steps=8", "scheduler.warmup_steps=2", "trainer.eval_every=0"]
    corpus = f"data.path={ROOT / 'data' / 'tinyshakespeare.txt'}"
    train(compose_config([*TINY, *few, corpus, f"out_dir={root / 'pretrain'}"]))
    model = [override for override in TINY if not override.startswith("experiment=")]
    examples = f"data.path={ROOT / 'data' / 'sft_example.jsonl'}"
    init_from = f"trainer.init_from={root / 'pretrain'}"
    train(compose_config(["experiment=sft", *model, *few, examples, init_from, f"out_dir={root / 'sft'}"]))
    return root / "sft"
