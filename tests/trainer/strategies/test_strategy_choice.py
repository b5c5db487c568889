"""Strategy configs, the generated DeepSpeed config and the launch checks, without starting processes."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, compose_config

from gptforge.cli import one_line
from gptforge.errors import ConfigError, LaunchError
from gptforge.trainer.devices import resolve_device
from gptforge.trainer.strategies import STRATEGIES
from gptforge.trainer.strategies.deepspeed import deepspeed_config
from gptforge.trainer.strategies.distributed import process_group_backend


@pytest.mark.parametrize(
    ("option", "name", "stage"),
    [
        ("single", "single", None),
        ("ddp", "ddp", None),
        ("fsdp", "fsdp", None),
        ("deepspeed_zero1", "deepspeed", 1),
        ("deepspeed_zero2", "deepspeed", 2),
        ("deepspeed_zero3", "deepspeed", 3),
    ],
)
def test_every_strategy_option_composes_to_a_registered_backend(option: str, name: str, stage) -> None:
    cfg = compose_config([*TINY, f"strategy={option}"])
    assert cfg.strategy.name == name and cfg.strategy.zero_stage == stage
    assert name in STRATEGIES


def test_zero_stage_typos_fail_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"strategy\.zero_stage=5 is not valid; choose 1, 2 or 3"):
        compose_config([*TINY, "strategy=deepspeed_zero2", "strategy.zero_stage=5"])
    with pytest.raises(Exception) as missing:
        compose_config([*TINY, "strategy=deepspeed_zero4"])
    message = one_line(missing.value)
    assert "strategy/deepspeed_zero4" in message and "deepspeed_zero3" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"only applies to strategy=deepspeed"):
        compose_config([*TINY, "strategy=ddp", "strategy.zero_stage=2"])
    with pytest.raises(ConfigError, match=r"activation_checkpointing=true is not supported with deepspeed"):
        compose_config([*TINY, "strategy=deepspeed_zero1", "strategy.activation_checkpointing=true"])


def test_deepspeed_config_is_generated_from_ours_with_raw_keys_merged_over_it() -> None:
    extra = {"zero_optimization": {"overlap_comm": True}, "gradient_clipping": 0.5}
    config = deepspeed_config(2, 4, grad_accum_steps=3, grad_clip=1.0, precision="bf16", extra=extra)
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 3
    assert config["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert config["gradient_clipping"] == 0.5  # the escape hatch wins
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    with pytest.raises(ConfigError, match=r"strategy\.extra\.scheduler"):
        deepspeed_config(1, 4, 1, 1.0, "fp32", {"scheduler": {"type": "WarmupLR"}})


def test_more_processes_per_node_than_gpus_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda", local_rank=1, procs_per_node=2) == torch.device("cuda", 1)
    with pytest.raises(LaunchError, match=r"NPROC=4 processes per node but 2 CUDA device\(s\) visible"):
        resolve_device("auto", local_rank=3, procs_per_node=4)


def test_process_group_backend_follows_the_device() -> None:
    assert process_group_backend("auto", torch.device("cpu")) == "gloo"
    assert process_group_backend("auto", torch.device("cuda", 0)) == "nccl"
    with pytest.raises(LaunchError, match=r"strategy\.backend=nccl needs CUDA"):
        process_group_backend("nccl", torch.device("cpu"))
