"""Config composition and validation: every shipped YAML composes, bad values fail early and by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, compose_config

from gptforge.errors import ConfigError
from gptforge.models import GPT
from gptforge.trainer.build import resolve_vocab_size


def _group_options() -> list[tuple[str, str]]:
    return [
        (group.name, path.stem)
        for group in sorted(CONFIG_DIR.iterdir())
        if group.is_dir()
        for path in sorted(group.glob("*.yaml"))
    ]


@pytest.mark.parametrize(("group", "option"), _group_options())
def test_every_shipped_config_composes_and_builds(group: str, option: str) -> None:
    override = f"{group}=[{option}]" if group == "logger" else f"{group}={option}"
    corpus = ["data.path=data/tinyshakespeare.txt"] if (group, option) == ("experiment", "pretrain") else []
    cfg = compose_config([override, *corpus])
    model_cfg = cfg.model
    model_cfg.vocab_size = resolve_vocab_size(None, 65, model_cfg.vocab_multiple)
    with torch.device("meta"):  # builds llama_1b without allocating its weights
        model = GPT(model_cfg)
    assert model.num_params() > 0


def test_defaults_are_the_shakespeare_cpu_run() -> None:
    cfg = compose_config()
    assert cfg.name == "shakespeare_char_cpu"
    assert cfg.out_dir == "runs/shakespeare_char_cpu"
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size) == (4, 4, 128, 64)
    assert (cfg.trainer.max_steps, cfg.trainer.micro_batch_size) == (2000, 12)
    assert (cfg.optim.lr, cfg.scheduler.min_lr_ratio, cfg.scheduler.warmup_steps) == (1e-3, 0.1, 100)
    assert list(cfg.optim.betas) == [0.9, 0.99]
    assert Path(cfg.data.path).name == "tinyshakespeare.txt"


def test_overrides_reach_the_config() -> None:
    cfg = compose_config(["model.n_layer=6", "optim.lr=3e-4", "model=llama_tiny"])
    assert (cfg.model.n_layer, cfg.optim.lr, cfg.model.flavour, cfg.model.components.bias) == (
        6,
        3e-4,
        "llama",
        False,
    )


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [
        (["model.n_embd=100", "model.n_head=3"], "model.n_embd=100"),
        (["model=llama_tiny", "model.n_kv_head=3"], "model.n_kv_head=3"),
        (["model.flavour=bert"], "model.flavour='bert'"),
        (["model.n_layer=0"], "model.n_layer=0"),
        (["trainer.micro_batch_size=-1"], "trainer.micro_batch_size=-1"),
        (["scheduler.warmup_steps=5000"], "scheduler.warmup_steps=5000"),
        (["trainer.precision=fp4"], "trainer.precision='fp4'"),
        (["optim.betas=[0.9]"], "optim.betas"),
        (["trainer.global_batch_size=30"], "trainer.global_batch_size=30"),
    ],
)
def test_invalid_values_raise_config_error_naming_the_key(overrides: list[str], culprit: str) -> None:
    with pytest.raises(ConfigError, match=culprit.replace("[", r"\[")):
        compose_config(overrides)
